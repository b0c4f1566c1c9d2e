//! IQs the server answers itself (RFC 6120 sections 8.2.3, 8.4 and 10.3): XEP-0199
//! ping, XEP-0030 service discovery, XEP-0092 software version, the legacy session
//! request, and `service-unavailable` for every namespace it does not serve.
//!
//! These are parsed into a tree (roxmltree): they are rare next to routed stanzas.

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::stanza::{IqType, Stanza};

use crate::core::Core;

pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_VERSION: &str = "jabber:iq:version";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// The single child of a get/set IQ, as (namespace, name, has `node`).
fn payload(stanza: &Stanza<'_>) -> Result<(String, String, bool), StanzaErrorCondition> {
    let text = std::str::from_utf8(stanza.bytes).map_err(|_| StanzaErrorCondition::BadRequest)?;
    let document = roxmltree::Document::parse(text).map_err(|_| StanzaErrorCondition::BadRequest)?;
    let mut children = document.root_element().children().filter(|c| c.is_element());
    let (Some(child), None) = (children.next(), children.next()) else {
        // RFC 6120 section 8.2.3: a get or set contains exactly one child.
        return Err(StanzaErrorCondition::BadRequest);
    };
    let namespace = child.tag_name().namespace().unwrap_or("").to_owned();
    Ok((namespace, child.tag_name().name().to_owned(), child.attribute("node").is_some()))
}

/// Answers an IQ addressed to the server (no `to`, or our domain) from `requester`.
/// The reply (result or error) is appended to `out`, the requester's own stream.
pub(crate) fn answer_for_server(stanza: &Stanza<'_>, requester: &str, domain: Option<&str>, out: &mut Vec<u8>) {
    let from = domain.unwrap_or("");
    let Some(kind) = stanza.iq_type().filter(|_| stanza.id.is_some()) else {
        return error(stanza, from, requester, StanzaErrorCondition::BadRequest, out);
    };
    if matches!(kind, IqType::Result | IqType::Error) {
        return;
    }
    let (namespace, name, has_node) = match payload(stanza) {
        Ok(payload) => payload,
        Err(condition) => return error(stanza, from, requester, condition, out),
    };
    match (kind, namespace.as_str(), name.as_str()) {
        (IqType::Get, NS_PING, "ping") => stanza.write_iq_result(from, requester, b"", out),
        (IqType::Set, NS_SESSION, "session") => stanza.write_iq_result(from, requester, b"", out),
        (IqType::Get, NS_DISCO_INFO, "query") if has_node => {
            error(stanza, from, requester, StanzaErrorCondition::ItemNotFound, out)
        }
        (IqType::Get, NS_DISCO_INFO, "query") => stanza.write_iq_result(from, requester, server_info().as_bytes(), out),
        (IqType::Get, NS_DISCO_ITEMS, "query") => {
            stanza.write_iq_result(from, requester, b"<query xmlns='http://jabber.org/protocol/disco#items'/>", out)
        }
        (IqType::Get, NS_VERSION, "query") => stanza.write_iq_result(from, requester, version().as_bytes(), out),
        _ => error(stanza, from, requester, StanzaErrorCondition::ServiceUnavailable, out),
    }
}

/// Answers an IQ to the bare JID `account` on the account's behalf (RFC 6121 section
/// 8.5.2.1.3); the reply is routed back to the sender.
pub(crate) fn answer_for_account(core: &Core, stanza: &Stanza<'_>, account: &str) {
    let Some(sender) = stanza.from.and_then(|f| f.value()).map(|f| f.into_owned()) else { return };
    let mut reply = Vec::with_capacity(256);
    let from = account;
    match payload(stanza) {
        Ok((namespace, name, _)) if stanza.iq_type() == Some(IqType::Get) && namespace == NS_PING && name == "ping" => {
            stanza.write_iq_result(from, &sender, b"", &mut reply)
        }
        Ok((namespace, name, false))
            if stanza.iq_type() == Some(IqType::Get) && namespace == NS_DISCO_INFO && name == "query" =>
        {
            let info = "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/></query>";
            stanza.write_iq_result(from, &sender, info.as_bytes(), &mut reply)
        }
        Ok(_) => error(stanza, from, &sender, StanzaErrorCondition::ServiceUnavailable, &mut reply),
        Err(condition) => error(stanza, from, &sender, condition, &mut reply),
    }
    let bare = sender.split('/').next().unwrap_or(&sender).to_owned();
    crate::router::route(core, &bare, &reply);
}

fn error(stanza: &Stanza<'_>, from: &str, to: &str, condition: StanzaErrorCondition, out: &mut Vec<u8>) {
    if stanza.is_error() {
        return;
    }
    stanza.write_error_reply(from, to, &StanzaError::new(condition), out);
}

/// XEP-0030 identity and features of the server.
fn server_info() -> String {
    let features = [NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, "urn:xmpp:stream-limits:0"];
    let mut query = String::from(
        "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/>",
    );
    for feature in features {
        query.push_str(&format!("<feature var='{feature}'/>"));
    }
    query.push_str("</query>");
    query
}

fn version() -> String {
    format!(
        "<query xmlns='jabber:iq:version'><name>Starling</name><version>{}</version></query>",
        env!("CARGO_PKG_VERSION")
    )
}
