//! `mod_ping`: XMPP ping (XEP-0199) answered for the server and for accounts
//! (RFC 6121 section 8.5.2.1.3: an IQ to an account's bare JID is the server's to
//! answer; one to an account that does not exist never reaches here).

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Reply};
use starling_shard::Core;

pub const NS_PING: &str = "urn:xmpp:ping";

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_PING];

const IQS: &[IqRoute] = &[IqRoute {
    namespace: NS_PING,
    element: "ping",
    scopes: &[IqScope::Server, IqScope::OwnAccount, IqScope::OtherAccount],
}];

/// The ping module: no state.
pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "mod_ping"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, _core: &Core, iq: &Iq<'_>) -> Reply {
        iq.result(b"")
    }
}
