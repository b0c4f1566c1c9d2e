//! `mod_disco`: service discovery (XEP-0030) for the server and for accounts, with the
//! server's entity capabilities (XEP-0115). Features and identities come from the
//! other enabled modules (`Module::server_features`, `account_features`,
//! `account_identities`): a module that is off advertises nothing.

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Modules, Reply};
use starling_shard::Core;
use starling_wire::error::StanzaErrorCondition;
use starling_wire::stanza::IqType;

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Where the server's XEP-0115 hash is published.
const CAPS_NODE: &str = "https://github.com/starling-xmpp/starling";

const IQS: &[IqRoute] = &[
    IqRoute {
        namespace: NS_DISCO_INFO,
        element: "query",
        scopes: &[IqScope::Server, IqScope::OwnAccount, IqScope::OtherAccount],
    },
    IqRoute {
        namespace: NS_DISCO_ITEMS,
        element: "query",
        scopes: &[IqScope::Server, IqScope::OwnAccount, IqScope::OtherAccount],
    },
];

/// The disco module: the server's and accounts' answers, built once.
pub struct Disco {
    server_info: String,
    account_info: String,
    caps_ver: String,
}

impl Disco {
    /// Collects what `modules` (the others, enabled) add; `register`: XEP-0077 is on.
    pub fn new(modules: &Modules, register: bool) -> Disco {
        let mut server: Vec<&'static str> = vec![NS_DISCO_INFO, NS_DISCO_ITEMS, "urn:xmpp:stream-limits:0"];
        let mut account: Vec<&'static str> = Vec::new();
        let mut identities: Vec<(&'static str, &'static str)> = vec![("account", "registered")];
        for module in modules {
            server.extend_from_slice(module.server_features());
            account.extend_from_slice(module.account_features());
            identities.extend_from_slice(module.account_identities());
        }
        if register {
            server.push("jabber:iq:register");
        }
        let caps_ver =
            caps_hash(vec!["server/im//Starling".to_owned()], server.iter().map(|f| f.to_string()).collect());
        let mut server_info =
            format!("<query xmlns='{NS_DISCO_INFO}'><identity category='server' type='im' name='Starling'/>");
        for feature in &server {
            server_info.push_str(&format!("<feature var='{feature}'/>"));
        }
        server_info.push_str("</query>");
        let mut account_info = format!("<query xmlns='{NS_DISCO_INFO}'>");
        for (category, kind) in &identities {
            account_info.push_str(&format!("<identity category='{category}' type='{kind}'/>"));
        }
        for feature in &account {
            account_info.push_str(&format!("<feature var='{feature}'/>"));
        }
        account_info.push_str("</query>");
        Disco { server_info, account_info, caps_ver }
    }
}

impl Module for Disco {
    fn name(&self) -> &'static str {
        "mod_disco"
    }

    /// The `<c/>` stream feature announcing the server's capabilities (XEP-0115
    /// section 6.3).
    fn stream_features(&self) -> String {
        format!("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{}'/>", self.caps_ver)
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, _core: &Core, iq: &Iq<'_>) -> Reply {
        if iq.kind != IqType::Get {
            return iq.error(StanzaErrorCondition::BadRequest);
        }
        let node = iq.child.attribute("node");
        let info = iq.child.tag_name().namespace() == Some(NS_DISCO_INFO);
        match (iq.scope, info, node) {
            (_, false, _) => iq.result(format!("<query xmlns='{NS_DISCO_ITEMS}'/>").as_bytes()),
            // XEP-0115 section 6.2: our own capabilities node answers like the server.
            (IqScope::Server, true, Some(node)) if node == format!("{CAPS_NODE}#{}", self.caps_ver) => {
                let info = self.server_info.replacen("<query ", &format!("<query node='{node}' "), 1);
                iq.result(info.as_bytes())
            }
            (_, true, Some(_)) => iq.error(StanzaErrorCondition::ItemNotFound),
            (IqScope::Server, true, None) => iq.result(self.server_info.as_bytes()),
            (_, true, None) => iq.result(self.account_info.as_bytes()),
        }
    }
}

/// The XEP-0115 `ver` (section 5.1, SHA-1, no extended forms) of identities written
/// `category/type/lang/name` and feature names.
pub(crate) fn caps_hash(mut identities: Vec<String>, mut features: Vec<String>) -> String {
    identities.sort();
    features.sort();
    let mut input = String::new();
    for part in identities.iter().chain(features.iter()) {
        input.push_str(part);
        input.push('<');
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}
