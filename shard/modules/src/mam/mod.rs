//! Message archive (XEP-0313 MAM v2, `urn:xmpp:mam:2`) with result set management
//! (XEP-0059).
//!
//! ```text
//!   chat message routed --> archive(sender) + archive(recipient) --run_for(owner)--> store
//!   query (with/start/end, before/after/max, flip-page) --> store page --> <result/>s + <fin/>
//! ```
//! Archive ids are `(microseconds << 8) | node number`, made increasing per core, so
//! ids from every node of a cluster are unique in one archive and sort by time
//! (MongooseIM's scheme). A user's archive is written only on its home core(s).

mod writer;

use std::cell::Cell;
use std::rc::Rc;

use starling_shard::delivery::Decision;
use starling_shard::module::{Delivery, Flow, Iq, IqRoute, IqScope, Module, Reply, Request, Sender};
use starling_shard::Core;
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, Jid, JidRef};
use starling_wire::stanza::{write_attribute, IqType, MessageType, Stanza, StanzaKind};

use crate::delay::{now_us, parse_utc};
use crate::store::{ArchiveQuery, ArchivedMessage, DataKind};
use crate::{Ctx, MamConfig};

pub use writer::Writer;

pub const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";

/// Advertised on accounts (XEP-0313 section 7) and, as ejabberd does, on the server.
const ACCOUNT_FEATURES: &[&str] = &[NS_MAM];
const SERVER_FEATURES: &[&str] = &[NS_MAM];

const IQS: &[IqRoute] = &[
    IqRoute { namespace: NS_MAM, element: "query", scopes: &[IqScope::OwnAccount] },
    IqRoute { namespace: NS_MAM, element: "prefs", scopes: &[IqScope::OwnAccount] },
];

/// `mod_mam`: the archive of one core, with its batched writer.
pub struct Mam {
    ctx: Rc<Ctx>,
    config: MamConfig,
    writer: Rc<Writer>,
    /// The last archive id this core handed out.
    clock: Cell<u64>,
}

impl Mam {
    pub fn new(ctx: Rc<Ctx>, config: MamConfig) -> Mam {
        let writer = Rc::new(Writer::new(ctx.db.clone(), config.clone()));
        Mam { ctx, config, writer, clock: Cell::new(0) }
    }
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mod_mam"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn account_features(&self) -> &[&'static str] {
        ACCOUNT_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        let request = iq.request();
        match (iq.kind, iq.child.tag_name().name()) {
            (IqType::Get, "query") => {
                let form = "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'>\
                    <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                    <field type='jid-single' var='with'/><field type='text-single' var='start'/>\
                    <field type='text-single' var='end'/></x></query>";
                Reply::Now(request.result(form.as_bytes()))
            }
            (IqType::Set, "query") => match parse_query(iq.child, &self.config) {
                Ok(query) => self.run_query(core, iq, request, query),
                Err(condition) => Reply::Now(request.error(condition)),
            },
            (_, "prefs") => self.preferences(iq, request),
            _ => Reply::Now(request.error(StanzaErrorCondition::FeatureNotImplemented)),
        }
    }

    /// The sender's copy of a message it sends (XEP-0313 section 5).
    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        let Some(to) = to else { return Flow::Continue };
        if stanza.kind == StanzaKind::Message && to.bare_str() != sender.jid.bare_str() {
            self.archive(core, stanza, sender.jid.bare_str(), to.bare_str());
        }
        Flow::Continue
    }

    /// The recipient's copy, wherever the message is delivered (local or from another
    /// node) or stored offline.
    fn on_deliver(&self, core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        if delivery.redelivery {
            // Archived when it was first delivered.
            return Flow::Continue;
        }
        let taken = match &delivery.decision {
            Decision::Deliver(_) => !delivery.targets.is_empty(),
            Decision::Store => true,
            _ => false,
        };
        if taken && delivery.stanza.kind == StanzaKind::Message && delivery.error.is_none() {
            self.archive(core, delivery.stanza, delivery.to.bare_str(), delivery.from);
        }
        Flow::Continue
    }
}
/// Which conversations a user archives (XEP-0313 section 6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Preferences {
    pub default: ArchiveDefault,
    /// Bare JIDs always archived, whatever the default.
    pub always: Vec<String>,
    /// Bare JIDs never archived (this wins when a JID is in both lists).
    pub never: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ArchiveDefault {
    #[default]
    Always,
    Never,
    /// Only contacts in the roster.
    Roster,
}

impl Preferences {
    /// Reads a `<prefs/>` element (as sent or as stored); `None` if malformed.
    pub fn parse(prefs: roxmltree::Node<'_, '_>) -> Option<Preferences> {
        let default = match prefs.attribute("default").unwrap_or("always") {
            "always" => ArchiveDefault::Always,
            "never" => ArchiveDefault::Never,
            "roster" => ArchiveDefault::Roster,
            _ => return None,
        };
        let list = |name: &str| -> Option<Vec<String>> {
            let Some(list) = prefs.children().find(|c| c.has_tag_name((NS_MAM, name))) else { return Some(Vec::new()) };
            list.children()
                .filter(|c| c.has_tag_name((NS_MAM, "jid")))
                .map(|jid| Jid::parse(jid.text().unwrap_or("")).ok().map(|j| j.bare_str().to_owned()))
                .collect()
        };
        Some(Preferences { default, always: list("always")?, never: list("never")? })
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Preferences> {
        let document = roxmltree::Document::parse(std::str::from_utf8(bytes).ok()?).ok()?;
        Preferences::parse(document.root_element())
    }

    pub fn write(&self) -> String {
        let default = match self.default {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        };
        let list = |jids: &[String]| -> String {
            jids.iter().map(|j| format!("<jid>{}</jid>", starling_wire::xml::escaped(j))).collect()
        };
        format!(
            "<prefs xmlns='urn:xmpp:mam:2' default='{default}'><always>{}</always><never>{}</never></prefs>",
            list(&self.always),
            list(&self.never)
        )
    }

    /// Whether a conversation with `with` (bare) is archived.
    pub fn allows(&self, with: &str, in_roster: bool) -> bool {
        if self.never.iter().any(|j| j == with) {
            return false;
        }
        if self.always.iter().any(|j| j == with) {
            return true;
        }
        match self.default {
            ArchiveDefault::Always => true,
            ArchiveDefault::Never => false,
            ArchiveDefault::Roster => in_roster,
        }
    }
}

impl Mam {
    /// Archives a routed message in the archive of `owner` (homed on this core); `with`
    /// is the other party. Only messages a user would want back are kept: chat and
    /// normal messages with a body, not `no-store`/`no-permanent-store` ones, and only
    /// as the owner's preferences allow (read from the loaded account; an account not
    /// loaded here archives by the default, `always`).
    fn archive(&self, core: &Core, stanza: &Stanza<'_>, owner: &str, with: &str) {
        if !worth_archiving(stanza) {
            return;
        }
        let with_bare = with.split('/').next().unwrap_or(with);
        if let Some(account) = crate::account::cached(&self.ctx, owner) {
            let Ok(account) = account.try_borrow() else { return };
            let in_roster = crate::roster::in_roster(&self.ctx, owner, with_bare);
            if !account.archive.allows(with_bare, in_roster) {
                return;
            }
        }
        let Ok(user) = owner.parse::<BareJid>() else { return };
        let timestamp_us = now_us();
        let id = self.next_id(core, timestamp_us);
        let message = ArchivedMessage { id, timestamp_us, with: with_bare.to_owned(), stanza: stanza.bytes.to_vec() };
        self.writer.append(core, user, message);
    }

    fn next_id(&self, core: &Core, timestamp_us: u64) -> u64 {
        let node = u64::from(core.node_num()) & 0xff;
        let clock = timestamp_us.max(self.clock.get() + 1);
        self.clock.set(clock);
        (clock << 8) | node
    }
}

fn worth_archiving(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let has = |needle: &[u8]| crate::contains(payload, needle);
    matches!(stanza.message_type(), MessageType::Chat | MessageType::Normal)
        && has(b"<body")
        && !has(b"<no-store xmlns='urn:xmpp:hints'")
        && !has(b"<no-permanent-store xmlns='urn:xmpp:hints'")
}

/// A parsed query: the store's part plus what the reply needs.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    store: ArchiveQuery,
    query_id: Option<String>,
    flip: bool,
}

fn parse_query(query: roxmltree::Node<'_, '_>, config: &MamConfig) -> Result<Query, StanzaErrorCondition> {
    let mut store =
        ArchiveQuery { max: config.default_result_limit.min(config.max_result_limit), ..ArchiveQuery::default() };
    let form = query.children().find(|c| c.tag_name().name() == "x" && c.tag_name().namespace() == Some(NS_DATA));
    for field in form.iter().flat_map(|x| x.children()).filter(|c| c.tag_name().name() == "field") {
        let value = field.children().find(|c| c.tag_name().name() == "value").and_then(|v| v.text()).unwrap_or("");
        match field.attribute("var") {
            Some("FORM_TYPE") if value != NS_MAM => return Err(StanzaErrorCondition::BadRequest),
            Some("with") => {
                let jid = Jid::parse(value).map_err(|_| StanzaErrorCondition::JidMalformed)?;
                store.with = Some(jid.bare_str().to_owned());
            }
            Some("start") => store.start_us = Some(parse_utc(value).ok_or(StanzaErrorCondition::BadRequest)?),
            Some("end") => store.end_us = Some(parse_utc(value).ok_or(StanzaErrorCondition::BadRequest)?),
            Some("FORM_TYPE") => {}
            // XEP-0313 section 4.1.1: an unknown field is an error, not ignored.
            _ => return Err(StanzaErrorCondition::BadRequest),
        }
    }
    let set = query.children().find(|c| c.tag_name().name() == "set" && c.tag_name().namespace() == Some(NS_RSM));
    for element in set.iter().flat_map(|s| s.children()).filter(|c| c.is_element()) {
        let text = element.text().unwrap_or("");
        let id = || text.parse::<u64>().map_err(|_| StanzaErrorCondition::ItemNotFound);
        match element.tag_name().name() {
            "max" => {
                store.max =
                    text.parse::<usize>().map_err(|_| StanzaErrorCondition::BadRequest)?.min(config.max_result_limit)
            }
            "after" => store.after_id = Some(id()?),
            "before" if text.is_empty() => store.from_end = true,
            "before" => {
                store.before_id = Some(id()?);
                store.from_end = true;
            }
            // XEP-0059 `<index/>` paging is not offered (MongooseIM does not either).
            _ => return Err(StanzaErrorCondition::FeatureNotImplemented),
        }
    }
    let flip = query.children().any(|c| c.tag_name().name() == "flip-page");
    Ok(Query { store, query_id: query.attribute("queryid").map(str::to_owned), flip })
}

impl Mam {
    /// Runs a query once every message archived so far on this core is written (a
    /// client that just received a message finds it in the archive).
    fn run_query(&self, _core: &Core, iq: &Iq<'_>, request: Request, query: Query) -> Reply {
        let Ok(user) = iq.account.parse::<BareJid>() else {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        };
        let full = iq.requester.to_owned();
        let Query { store: page_query, query_id, flip } = query;
        let db = self.ctx.db.clone();
        let synced = self.writer.sync();
        Reply::Later(Box::pin(async move {
            synced.await;
            let owner = user.clone();
            let page = match db.run_for(user.as_str(), move |store| store.archive_query(&owner, &page_query)).await {
                Ok(page) => page,
                Err(error) => {
                    log::warn!("archive: query of {user} failed: {error}");
                    return request.error(StanzaErrorCondition::InternalServerError);
                }
            };
            let mut messages = page.messages;
            if flip {
                messages.reverse();
            }
            let mut out = Vec::new();
            for message in &messages {
                write_result(&full, user.as_str(), query_id.as_deref(), message, &mut out);
            }
            let mut fin = b"<fin xmlns='urn:xmpp:mam:2'".to_vec();
            if page.complete {
                fin.extend_from_slice(b" complete='true'");
            }
            fin.extend_from_slice(b"><set xmlns='http://jabber.org/protocol/rsm'>");
            if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
                fin.extend_from_slice(format!("<first>{}</first><last>{}</last>", first.id, last.id).as_bytes());
            }
            fin.extend_from_slice(format!("<count>{}</count></set></fin>", page.count).as_bytes());
            out.extend_from_slice(&request.result(&fin));
            out
        }))
    }
}

/// One `<message><result><forwarded>` carrying an archived message (XEP-0313 section 4.2).
fn write_result(to: &str, from: &str, query_id: Option<&str>, message: &ArchivedMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<message");
    write_attribute(out, "from", from);
    write_attribute(out, "to", to);
    out.extend_from_slice(b"><result xmlns='urn:xmpp:mam:2'");
    if let Some(query_id) = query_id {
        write_attribute(out, "queryid", query_id);
    }
    write_attribute(out, "id", &message.id.to_string());
    out.push(b'>');
    crate::carbons::write_forwarded(&message.stanza, Some(message.timestamp_us), out);
    out.extend_from_slice(b"</result></message>");
}

impl Mam {
    /// XEP-0313 section 6 preferences: kept with the account (applied when archiving)
    /// and stored; the default is `always`.
    fn preferences(&self, iq: &Iq<'_>, request: Request) -> Reply {
        let change = match iq.kind {
            IqType::Set => match Preferences::parse(iq.child) {
                Some(preferences) => Some(preferences),
                None => return Reply::Now(request.error(StanzaErrorCondition::BadRequest)),
            },
            _ => None,
        };
        let Ok(user) = iq.account.parse::<BareJid>() else {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        };
        let ctx = self.ctx.clone();
        Reply::Later(Box::pin(async move {
            let account = match crate::account::load(&ctx, &user).await {
                Ok(account) => account,
                Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
            };
            let Some(preferences) = change else {
                return request.result(account.borrow().archive.write().as_bytes());
            };
            let text = preferences.write();
            account.borrow_mut().archive = preferences;
            let (owner, value) = (user.clone(), text.clone().into_bytes());
            let write = ctx.db.run_for(user.as_str(), move |store| {
                store.set_data(&owner, DataKind::ArchivePreferences, "", Some(&value))
            });
            match write.await {
                Ok(()) => request.result(text.as_bytes()),
                Err(_) => request.error(StanzaErrorCondition::InternalServerError),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<Query, StanzaErrorCondition> {
        let document = roxmltree::Document::parse(xml).unwrap();
        parse_query(document.root_element(), &MamConfig::default())
    }

    /// Filters and paging are read from the data form and the RSM set.
    #[test]
    fn parses_queries() {
        let query = parse(
            "<query xmlns='urn:xmpp:mam:2' queryid='q1'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>Bob@X/phone</value></field>\
             <field var='start'><value>1970-01-01T00:00:01Z</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set><flip-page/></query>",
        )
        .unwrap();
        assert_eq!(query.query_id.as_deref(), Some("q1"));
        assert!(query.flip);
        let expected = ArchiveQuery {
            with: Some("bob@x".into()),
            start_us: Some(1_000_000),
            max: 10,
            from_end: true,
            ..ArchiveQuery::default()
        };
        assert_eq!(query.store, expected);
        let after = parse("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after>42</after><max>9999</max></set></query>").unwrap();
        assert_eq!((after.store.after_id, after.store.max), (Some(42), MamConfig::default().max_result_limit));
    }

    /// Bad filters get the XEP's errors.
    #[test]
    fn refuses_bad_queries() {
        let cases = [
            ("<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='start'><value>yesterday</value></field></x></query>", StanzaErrorCondition::BadRequest),
            ("<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='colour'><value>red</value></field></x></query>", StanzaErrorCondition::BadRequest),
            ("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after>nope</after></set></query>", StanzaErrorCondition::ItemNotFound),
            ("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set></query>", StanzaErrorCondition::FeatureNotImplemented),
        ];
        for (xml, condition) in cases {
            assert_eq!(parse(xml), Err(condition), "{xml}");
        }
    }

    /// Preferences: lists parse to bare JIDs, `never` wins, `roster` asks the roster,
    /// and what is written parses back the same.
    #[test]
    fn preferences_decide_and_round_trip() {
        let prefs = Preferences::from_bytes(
            b"<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>Boss@X/desk</jid></always>\
              <never><jid>spam@x</jid><jid>boss@x</jid></never></prefs>",
        )
        .unwrap();
        assert_eq!(prefs.always, ["boss@x"]);
        assert!(!prefs.allows("boss@x", true), "never wins over always");
        assert!(prefs.allows("friend@x", true));
        assert!(!prefs.allows("stranger@x", false));
        assert_eq!(Preferences::from_bytes(prefs.write().as_bytes()), Some(prefs));
        assert!(Preferences::from_bytes(b"<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>").is_none());
        assert!(Preferences::default().allows("anyone@x", false));
    }

    /// Only messages with a body, without no-store hints, are archived.
    #[test]
    fn archives_conversations_only() {
        let cases: [(&[u8], bool); 4] = [
            (b"<message type='chat'><body>hi</body></message>", true),
            (b"<message type='headline'><body>news</body></message>", false),
            (b"<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", false),
            (b"<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", false),
        ];
        for (bytes, expected) in cases {
            assert_eq!(worth_archiving(&Stanza::parse(bytes).unwrap()), expected);
        }
    }
}
