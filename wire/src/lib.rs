//! starling-wire: XMPP bytes <-> stanzas, sans-IO.
#![forbid(unsafe_code)]

pub mod bosh;
pub mod c2s;
pub mod error;
pub mod framer;
pub mod http;
pub mod jid;
pub mod limits;
pub mod sasl;
pub mod sm;
pub mod split;
pub mod stanza;
pub mod websocket;
pub mod xml;
