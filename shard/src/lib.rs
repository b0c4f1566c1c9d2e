//! starling-shard: the per-core world of a Starling node.
//!
//! One glommio executor per core, pinned. Every core accepts on every c2s listener
//! (SO_REUSEPORT), negotiates streams with `starling-wire`, and moves each bound
//! connection to its home core (`hash(bare JID) % cores`), which holds that account's
//! slice of the session table. A stanza reaches its recipient in at most one hop.
//!
//! ```text
//!   accept (any core) --negotiate--> bind --move (fd + TLS + bytes)--> home core
//!   home core: session loop --stamp--> router --(same core)--> recipient mailbox
//!                                         \--(other core)--> batch --> peer core
//!   blocking: DB threads (credentials, PBKDF2) <--jobs/oneshot--> core tasks
//! ```
//!
//! Nothing mutable is shared between cores; per-core state lives in `Rc`/`RefCell`.
//! Protocol decisions live in `wire` (negotiation) and in the handler modules
//! (`router`, `iq`, `presence`); `io` and `connection` only shuttle bytes.
//!
//! Drive it with [`Node::start`] and stop it with [`Node::shutdown`].

mod account;
mod archive;
#[doc(hidden)]
pub mod bench;
pub mod blocking;
mod budget;
mod carbons;
pub mod cluster;
mod connection;
mod contain;
mod core;
mod delay;
mod flow;
mod im;
mod io;
mod iq;
pub mod limits;
mod mailbox;
mod node;
mod offline;
mod pep;
mod presence;
pub mod roster;
mod router;
mod session;
mod sessions;
pub mod settings;
mod subscription;

pub use crate::core::Core;

/// Stream features this shard adds after authentication, next to resource binding:
/// roster versioning (XEP-0237), client state indication (XEP-0352) and the server's
/// entity capabilities (XEP-0115).
pub fn stream_features() -> String {
    format!("<ver xmlns='urn:xmpp:features:rosterver'/><csi xmlns='urn:xmpp:csi:0'/>{}", iq::caps_feature())
}
pub use node::{CoreHealth, Node, NodeStats, StartError, CORE_DIED_EXIT_CODE};
