//! starling-shard: the per-core world of a Starling node.
//!
//! One glommio executor per core, pinned. Every core accepts on every c2s listener
//! (SO_REUSEPORT), negotiates streams with `starling-wire`, and moves each bound
//! connection to its home core (`hash(bare JID) % cores`), which holds that account's
//! slice of the session table. A stanza reaches its recipient in at most one hop.
//!
//! ```text
//!   accept (any core) --negotiate--> bind --move (fd + TLS + bytes)--> home core
//!   home core: session loop --stamp--> modules' on_send --> router --(same core)--> deliver
//!                                                          \--(other core)--> batch --> peer core
//!   deliver: delivery::decide --> modules' on_deliver --> on_push --> recipient mailbox
//!   db: DB threads (credentials, PBKDF2, the modules' storage) <--jobs/oneshot--> core tasks
//! ```
//!
//! Nothing mutable is shared between cores; per-core state lives in `Rc`/`RefCell`.
//! Protocol decisions live in `wire` (negotiation), in `delivery` (RFC 6121 section
//! 8.5) and in the feature modules behind [`module::Module`] (the crate
//! `starling-modules`, which this crate never names); `io` and `connection` only
//! shuttle bytes.
//!
//! Drive it with [`Node::start`] and stop it with [`Node::shutdown`].

mod api;
#[doc(hidden)]
pub mod bench;
mod bosh;
mod budget;
pub mod cluster;
mod connection;
mod contain;
mod core;
pub mod db;
pub mod delivery;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
mod io;
pub mod limits;
mod mailbox;
pub mod module;
mod node;
pub mod resume;
mod router;
mod session;
mod sessions;
pub mod settings;
mod web;

pub use crate::core::Core;
pub use node::{CoreHealth, Node, NodeStats, StartError, CORE_DIED_EXIT_CODE};
pub use sessions::{Session, SessionId};
