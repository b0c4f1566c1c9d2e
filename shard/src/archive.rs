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

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, Jid};
use starling_wire::stanza::{write_attribute, IqType, MessageType, Stanza};

use crate::blocking::{ArchiveQuery, ArchivedMessage, DataKind};
use crate::core::Core;
use crate::delay::{now_us, parse_utc};
use crate::im::{Outcome, Request};
use crate::limits::ARCHIVE_PAGE_MAX;
use crate::session::State;

pub const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";

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

/// Archives a routed message in the archive of `owner` (homed on this core); `with`
/// is the other party. Only messages a user would want back are kept: chat and
/// normal messages with a body, not `no-store`/`no-permanent-store` ones, and only
/// as the owner's preferences allow (read from the loaded account; an account not
/// loaded here archives by the default, `always`).
pub(crate) fn archive(core: &Core, stanza: &Stanza<'_>, owner: &str, with: &str) {
    if !worth_archiving(stanza) {
        return;
    }
    let with_bare = with.split('/').next().unwrap_or(with);
    if let Some(account) = crate::account::cached(core, owner) {
        let Ok(account) = account.try_borrow() else { return };
        let in_roster = account.roster.item(with_bare).is_some_and(|i| i.visible);
        if !account.archive.allows(with_bare, in_roster) {
            return;
        }
    }
    let Ok(user) = owner.parse::<BareJid>() else { return };
    let with = with.split('/').next().unwrap_or(with).to_owned();
    let timestamp_us = now_us();
    let message =
        ArchivedMessage { id: next_id(core, timestamp_us), timestamp_us, with, stanza: stanza.bytes.to_vec() };
    core.shared.db.submit_for(owner, "archiving a message", move |store| store.archive_put(&user, &message));
}

fn worth_archiving(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let has = |needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
    matches!(stanza.message_type(), MessageType::Chat | MessageType::Normal)
        && has(b"<body")
        && !has(b"<no-store xmlns='urn:xmpp:hints'")
        && !has(b"<no-permanent-store xmlns='urn:xmpp:hints'")
}

fn next_id(core: &Core, timestamp_us: u64) -> u64 {
    let node = core.cluster.as_ref().map_or(0, |c| c.node_num()) as u64 & 0xff;
    let clock = timestamp_us.max(core.archive_clock.get() + 1);
    core.archive_clock.set(clock);
    (clock << 8) | node
}

/// Handles an IQ in `urn:xmpp:mam:2` from the client about its own archive.
pub(crate) fn from_client(
    core: &Core,
    state: &mut State,
    request: Request,
    kind: IqType,
    child: roxmltree::Node<'_, '_>,
) -> Outcome {
    match (kind, child.tag_name().name()) {
        (IqType::Get, "query") => {
            let form = "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'>\
                <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                <field type='jid-single' var='with'/><field type='text-single' var='start'/>\
                <field type='text-single' var='end'/></x></query>";
            state.out.extend_from_slice(&request.result(form.as_bytes()));
            Outcome::Done
        }
        (IqType::Set, "query") => match parse_query(child) {
            Ok(query) => run_query(core, state, request, query),
            Err(condition) => {
                state.out.extend_from_slice(&request.error(condition));
                Outcome::Done
            }
        },
        (_, "prefs") => preferences(core, state, request, kind, child),
        _ => {
            state.out.extend_from_slice(&request.error(StanzaErrorCondition::FeatureNotImplemented));
            Outcome::Done
        }
    }
}

/// A parsed query: the store's part plus what the reply needs.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    store: ArchiveQuery,
    query_id: Option<String>,
    flip: bool,
}

fn parse_query(query: roxmltree::Node<'_, '_>) -> Result<Query, StanzaErrorCondition> {
    let mut store = ArchiveQuery { max: ARCHIVE_PAGE_MAX, ..ArchiveQuery::default() };
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
                store.max = text.parse::<usize>().map_err(|_| StanzaErrorCondition::BadRequest)?.min(ARCHIVE_PAGE_MAX)
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

fn run_query(core: &Core, state: &State, request: Request, query: Query) -> Outcome {
    let user = state.jid.to_bare();
    let full = state.jid.as_str().to_owned();
    let Query { store: page_query, query_id, flip } = query;
    let owner = user.clone();
    let read = core.shared.db.run_for(user.as_str(), move |store| store.archive_query(&owner, &page_query));
    Outcome::Wait(Box::pin(async move {
        let page = match read.await {
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

/// XEP-0313 section 6 preferences: kept with the account (applied when archiving)
/// and stored; the default is `always`.
fn preferences(
    core: &Core,
    state: &mut State,
    request: Request,
    kind: IqType,
    child: roxmltree::Node<'_, '_>,
) -> Outcome {
    let change = match kind {
        IqType::Set => match Preferences::parse(child) {
            Some(preferences) => Some(preferences),
            None => {
                state.out.extend_from_slice(&request.error(StanzaErrorCondition::BadRequest));
                return Outcome::Done;
            }
        },
        _ => None,
    };
    let core = core.rc();
    let user = state.jid.to_bare();
    Outcome::Wait(Box::pin(async move {
        let account = match crate::account::load(&core, &user).await {
            Ok(account) => account,
            Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
        };
        let Some(preferences) = change else {
            return request.result(account.borrow().archive.write().as_bytes());
        };
        let text = preferences.write();
        account.borrow_mut().archive = preferences;
        let (owner, value) = (user.clone(), text.clone().into_bytes());
        let write = core.shared.db.run_for(user.as_str(), move |store| {
            store.set_data(&owner, DataKind::ArchivePreferences, "", Some(&value))
        });
        match write.await {
            Ok(()) => request.result(text.as_bytes()),
            Err(_) => request.error(StanzaErrorCondition::InternalServerError),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<Query, StanzaErrorCondition> {
        let document = roxmltree::Document::parse(xml).unwrap();
        parse_query(document.root_element())
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
        assert_eq!((after.store.after_id, after.store.max), (Some(42), ARCHIVE_PAGE_MAX));
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
