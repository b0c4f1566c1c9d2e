//! `mod_stream_management`: XEP-0198. Acknowledgements and resumption are connection
//! state and live in the session runtime (`starling_shard::resume`); this module is
//! what switches them on: it advertises `<sm xmlns='urn:xmpp:sm:3'/>` after
//! authentication, and the server hands its options to the runtime.

use starling_shard::module::Module;

/// The stream management module of one core.
pub struct StreamManagement;

impl Module for StreamManagement {
    fn name(&self) -> &'static str {
        "mod_stream_management"
    }

    fn stream_features(&self) -> String {
        starling_wire::sm::FEATURE.to_owned()
    }
}
