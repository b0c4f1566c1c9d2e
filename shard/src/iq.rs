//! IQs the server answers itself (RFC 6120 sections 8.2.3, 8.4 and 10.3): XEP-0199
//! ping, XEP-0030 service discovery, XEP-0092 software version, the legacy session
//! request, vCards (XEP-0054) and last activity (XEP-0012) of other accounts, and `service-unavailable` for every namespace it does not serve.
//!
//! These are parsed into a tree (roxmltree): they are rare next to routed stanzas.

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::BareJid;
use starling_wire::stanza::{IqType, Stanza};

use crate::core::Core;

pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_VERSION: &str = "jabber:iq:version";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_LAST: &str = "jabber:iq:last";
use crate::im::NS_VCARD;

/// The single child of a get/set IQ, as (namespace, name, has `node`).
fn payload(stanza: &Stanza<'_>) -> Result<(String, String, Option<String>), StanzaErrorCondition> {
    let text = std::str::from_utf8(stanza.bytes).map_err(|_| StanzaErrorCondition::BadRequest)?;
    let document = roxmltree::Document::parse(text).map_err(|_| StanzaErrorCondition::BadRequest)?;
    let mut children = document.root_element().children().filter(|c| c.is_element());
    let (Some(child), None) = (children.next(), children.next()) else {
        // RFC 6120 section 8.2.3: a get or set contains exactly one child.
        return Err(StanzaErrorCondition::BadRequest);
    };
    let namespace = child.tag_name().namespace().unwrap_or("").to_owned();
    Ok((namespace, child.tag_name().name().to_owned(), child.attribute("node").map(str::to_owned)))
}

/// Answers an IQ addressed to the server (no `to`, or our domain) from `requester`.
/// The reply (result or error) is appended to `out`, the requester's own stream.
pub(crate) fn answer_for_server(
    core: &Core,
    stanza: &Stanza<'_>,
    requester: &str,
    domain: Option<&str>,
    out: &mut Vec<u8>,
) {
    let from = domain.unwrap_or("");
    let Some(kind) = stanza.iq_type().filter(|_| stanza.id.is_some()) else {
        return error(stanza, from, requester, StanzaErrorCondition::BadRequest, out);
    };
    if matches!(kind, IqType::Result | IqType::Error) {
        return;
    }
    let (namespace, name, node) = match payload(stanza) {
        Ok(payload) => payload,
        Err(condition) => return error(stanza, from, requester, condition, out),
    };
    match (kind, namespace.as_str(), name.as_str()) {
        (IqType::Get, NS_PING, "ping") => stanza.write_iq_result(from, requester, b"", out),
        (IqType::Set, NS_SESSION, "session") => stanza.write_iq_result(from, requester, b"", out),
        // XEP-0115 section 6.2: our own capabilities node answers like the server.
        (IqType::Get, NS_DISCO_INFO, "query") if node.as_deref() == Some(caps_node().as_str()) => {
            let info = server_info().replacen("<query ", &format!("<query node='{}' ", caps_node()), 1);
            stanza.write_iq_result(from, requester, info.as_bytes(), out)
        }
        (IqType::Get, NS_DISCO_INFO, "query") if node.is_some() => {
            error(stanza, from, requester, StanzaErrorCondition::ItemNotFound, out)
        }
        (IqType::Get, NS_DISCO_INFO, "query") => stanza.write_iq_result(from, requester, server_info().as_bytes(), out),
        (IqType::Get, NS_DISCO_ITEMS, "query") => {
            stanza.write_iq_result(from, requester, b"<query xmlns='http://jabber.org/protocol/disco#items'/>", out)
        }
        (IqType::Get, NS_VERSION, "query") => stanza.write_iq_result(from, requester, version().as_bytes(), out),
        // XEP-0012 section 5: a server's last activity is its uptime.
        (IqType::Get, NS_LAST, "query") => {
            let uptime = format!("<query xmlns='jabber:iq:last' seconds='{}'/>", core.started.elapsed().as_secs());
            stanza.write_iq_result(from, requester, uptime.as_bytes(), out)
        }
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
        Ok((namespace, name, None))
            if stanza.iq_type() == Some(IqType::Get) && namespace == NS_DISCO_INFO && name == "query" =>
        {
            stanza.write_iq_result(from, &sender, account_info().as_bytes(), &mut reply)
        }
        Ok((namespace, name, _))
            if stanza.iq_type() == Some(IqType::Get) && namespace == crate::pep::NS_PUBSUB && name == "pubsub" =>
        {
            return items_for_contact(core, stanza, account, sender);
        }
        Ok((namespace, name, _))
            if stanza.iq_type() == Some(IqType::Get)
                && matches!((namespace.as_str(), name.as_str()), (NS_VCARD, "vCard") | (NS_LAST, "query")) =>
        {
            let Ok(user) = account.parse::<BareJid>() else { return };
            let request = crate::im::Request::new(stanza, account, &sender);
            let core = core.rc();
            let last = namespace == NS_LAST;
            crate::contain::spawn(core.clone(), "a request answered for an account", async move {
                let reply = match last {
                    true => last_activity(&core, &user, request).await,
                    false => crate::im::read_vcard(core.clone(), user, request).await,
                };
                let bare = sender.split('/').next().unwrap_or(&sender).to_owned();
                crate::router::route(&core, &bare, &reply);
            });
            return;
        }
        Ok(_) => error(stanza, from, &sender, StanzaErrorCondition::ServiceUnavailable, &mut reply),
        Err(condition) => error(stanza, from, &sender, condition, &mut reply),
    }
    let bare = sender.split('/').next().unwrap_or(&sender).to_owned();
    crate::router::route(core, &bare, &reply);
}

/// XEP-0163: a contact reads items of one of the account's nodes.
fn items_for_contact(core: &Core, stanza: &Stanza<'_>, account: &str, sender: String) {
    let request = crate::im::Request::new(stanza, account, &sender);
    let bare = sender.split('/').next().unwrap_or(&sender).to_owned();
    let items = std::str::from_utf8(stanza.bytes).ok().and_then(|text| {
        let document = roxmltree::Document::parse(text).ok()?;
        let items = document.descendants().find(|n| n.has_tag_name((crate::pep::NS_PUBSUB, "items")))?;
        let max = items.attribute("max_items").and_then(|m| m.parse().ok());
        Some((items.attribute("node")?.to_owned(), max.unwrap_or(crate::limits::PEP_ITEMS_PER_NODE_MAX)))
    });
    let (Some((node, max)), Ok(owner)) = (items, account.parse::<BareJid>()) else {
        crate::router::route(core, &bare, &request.error(StanzaErrorCondition::FeatureNotImplemented));
        return;
    };
    let is_owner = bare == owner.as_str();
    let core = core.rc();
    crate::contain::spawn(core.clone(), "a request answered for an account", async move {
        let reply = crate::pep::items(core.clone(), owner, node, max, request, is_owner).await;
        crate::router::route(&core, &bare, &reply);
    });
}

/// XEP-0030 on an account: the account itself, its archive and its PEP service.
fn account_info() -> String {
    let mut query = String::from(
        "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/>\
         <identity category='pubsub' type='pep'/>",
    );
    let features = [
        "urn:xmpp:mam:2",
        "http://jabber.org/protocol/pubsub#publish",
        "http://jabber.org/protocol/pubsub#publish-options",
        "http://jabber.org/protocol/pubsub#retrieve-items",
        "http://jabber.org/protocol/pubsub#retract-items",
        "http://jabber.org/protocol/pubsub#delete-nodes",
        "http://jabber.org/protocol/pubsub#auto-create",
        "http://jabber.org/protocol/pubsub#persistent-items",
        "http://jabber.org/protocol/pubsub#last-published",
        "http://jabber.org/protocol/pubsub#access-presence",
        "http://jabber.org/protocol/pubsub#access-open",
        "http://jabber.org/protocol/pubsub#access-whitelist",
    ];
    for feature in features {
        query.push_str(&format!("<feature var='{feature}'/>"));
    }
    query.push_str("</query>");
    query
}

/// XEP-0012 section 4: how long `user` has been away, for a requester the user shares
/// presence with (`forbidden` otherwise); 0 while a resource is online.
async fn last_activity(core: &Core, user: &BareJid, request: crate::im::Request) -> Vec<u8> {
    let requester = request.requester_bare().to_owned();
    let allowed = requester == user.as_str()
        || match crate::account::load(core, user).await {
            Ok(account) => account.borrow().roster.item(&requester).is_some_and(|i| i.subscription.from()),
            Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
        };
    crate::account::release(core, user.as_str());
    if !allowed {
        return request.error(StanzaErrorCondition::Forbidden);
    }
    if core.sessions.borrow().sessions(user.as_str()).iter().any(|s| s.available) {
        return request.result(b"<query xmlns='jabber:iq:last' seconds='0'/>");
    }
    let owner = user.clone();
    let stored = core
        .shared
        .db
        .run_for(user.as_str(), move |store| store.data(&owner, crate::blocking::DataKind::LastActivity, ""))
        .await;
    match stored {
        Ok(Some(value)) => {
            let then: u64 = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            let seconds = (crate::delay::now_us() / 1_000_000).saturating_sub(then);
            request.result(format!("<query xmlns='jabber:iq:last' seconds='{seconds}'/>").as_bytes())
        }
        Ok(None) => request.error(StanzaErrorCondition::ItemNotFound),
        Err(_) => request.error(StanzaErrorCondition::InternalServerError),
    }
}

fn error(stanza: &Stanza<'_>, from: &str, to: &str, condition: StanzaErrorCondition, out: &mut Vec<u8>) {
    if stanza.is_error() {
        return;
    }
    stanza.write_error_reply(from, to, &StanzaError::new(condition), out);
}

/// XEP-0030 identity and features of the server.
fn server_info() -> String {
    let mut query = String::from(
        "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/>",
    );
    for feature in server_features() {
        query.push_str(&format!("<feature var='{feature}'/>"));
    }
    query.push_str("</query>");
    query
}

fn server_features() -> [&'static str; 12] {
    [
        NS_DISCO_INFO,
        NS_DISCO_ITEMS,
        NS_PING,
        NS_VERSION,
        NS_LAST,
        NS_VCARD,
        crate::im::NS_PRIVATE,
        crate::im::NS_BLOCKING,
        crate::im::NS_CARBONS,
        crate::archive::NS_MAM,
        "msgoffline",
        "urn:xmpp:stream-limits:0",
    ]
}

/// Where the server's XEP-0115 hash is published.
const CAPS_NODE: &str = "https://github.com/starling-xmpp/starling";

/// `node#ver` of the server's capabilities.
fn caps_node() -> String {
    format!("{CAPS_NODE}#{}", caps_ver())
}

/// The XEP-0115 verification string hash of [`server_info`] (section 5.1).
fn caps_ver() -> String {
    let features = server_features().iter().map(|f| f.to_string()).collect();
    crate::pep::caps_hash(vec!["server/im//Starling".to_owned()], features)
}

/// The `<c/>` stream feature announcing the server's capabilities (XEP-0115 section 6.3).
pub fn caps_feature() -> String {
    format!("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{}'/>", caps_ver())
}

fn version() -> String {
    format!(
        "<query xmlns='jabber:iq:version'><name>Starling</name><version>{}</version></query>",
        env!("CARGO_PKG_VERSION")
    )
}
