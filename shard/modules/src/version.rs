//! `mod_version`: software version (XEP-0092) of the server.

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Reply};
use starling_shard::Core;

use crate::VersionConfig;

pub const NS_VERSION: &str = "jabber:iq:version";

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_VERSION];

const IQS: &[IqRoute] = &[IqRoute { namespace: NS_VERSION, element: "query", scopes: &[IqScope::Server] }];

/// The version module.
pub struct Version {
    config: VersionConfig,
}

impl Version {
    pub fn new(config: VersionConfig) -> Version {
        Version { config }
    }
}

impl Module for Version {
    fn name(&self) -> &'static str {
        "mod_version"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, _core: &Core, iq: &Iq<'_>) -> Reply {
        let mut query = format!(
            "<query xmlns='jabber:iq:version'><name>Starling</name><version>{}</version>",
            env!("CARGO_PKG_VERSION")
        );
        if self.config.os_info {
            query.push_str(&format!("<os>{}</os>", std::env::consts::OS));
        }
        query.push_str("</query>");
        iq.result(query.as_bytes())
    }
}
