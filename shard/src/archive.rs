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

/// Archives a routed message in the archive of `owner` (homed on this core); `with`
/// is the other party. Only messages a user would want back are kept: chat and
/// normal messages with a body, not `no-store`/`no-permanent-store` ones.
pub(crate) fn archive(core: &Core, stanza: &Stanza<'_>, owner: &str, with: &str) {
    if !worth_archiving(stanza) {
        return;
    }
    let Ok(user) = owner.parse::<BareJid>() else { return };
    let with = with.split('/').next().unwrap_or(with).to_owned();
    let timestamp_us = now_us();
    let message =
        ArchivedMessage { id: next_id(core, timestamp_us), timestamp_us, with, stanza: stanza.bytes.to_vec() };
    let write = core.shared.db.run_for(owner, move |store| store.archive_put(&user, &message));
    glommio::spawn_local(async move {
        if let Err(error) = write.await {
            log::warn!("archive: storing a message failed: {error}");
        }
    })
    .detach();
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

/// XEP-0313 section 6 preferences: stored and returned; the default is `always`.
fn preferences(
    core: &Core,
    state: &mut State,
    request: Request,
    kind: IqType,
    child: roxmltree::Node<'_, '_>,
) -> Outcome {
    let user = state.jid.to_bare();
    let owner = user.clone();
    if kind == IqType::Set {
        let default = child.attribute("default").unwrap_or("always");
        if !matches!(default, "always" | "never" | "roster") {
            state.out.extend_from_slice(&request.error(StanzaErrorCondition::BadRequest));
            return Outcome::Done;
        }
        let prefs = format!("<prefs xmlns='urn:xmpp:mam:2' default='{default}'><always/><never/></prefs>");
        let value = prefs.clone().into_bytes();
        let write = core.shared.db.run_for(user.as_str(), move |store| {
            store.set_data(&owner, DataKind::ArchivePreferences, "", Some(&value))
        });
        return Outcome::Wait(Box::pin(async move {
            match write.await {
                Ok(()) => request.result(prefs.as_bytes()),
                Err(_) => request.error(StanzaErrorCondition::InternalServerError),
            }
        }));
    }
    let read = core.shared.db.run_for(user.as_str(), move |store| store.data(&owner, DataKind::ArchivePreferences, ""));
    Outcome::Wait(Box::pin(async move {
        match read.await {
            Ok(Some(prefs)) => request.result(&prefs),
            Ok(None) => request.result(b"<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never/></prefs>"),
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
