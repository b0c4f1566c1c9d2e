//! starling-replicate: the replicated tables of a Starling cluster, sans-IO.
//!
//! Learned from CETS (esl/cets) and changed where it was weak: every entry of a
//! node-owned table belongs to exactly one owner (one core of one node) and only
//! the owner writes it, so replication is, per (owner, peer), a single-writer stream:
//! a snapshot, then ordered changes. No cluster-wide lock, no pause of other nodes,
//! no conflicts to merge.
//!
//! ```text
//!  owner core --OutLink--> [frames over TCP] --InLink--> peer node
//!   Hello/Challenge/Proof/Welcome (HMAC over the cluster secret, version, cluster name)
//!   SnapshotBegin, Put..., SnapshotEnd, then Put/Remove, Route (stanzas), Heartbeat
//!  peer: Replica::apply(owner, epoch, change) -> its ReplicaStore
//! ```
//!
//! - [`frame`]: the codec (length-prefixed, versioned handshake, strict decoding);
//! - [`link`]: the owner's and the peer's link state machines (handshake, heartbeats,
//!   bounded send queues); drive with `handle_input`/`handle_timeout`, drain `transmit`;
//! - [`replica`]: epochs, snapshots, dropping a dead owner's entries;
//! - [`membership`]: `cets systemInfo` from discovery results and link states.
//!
//! No sockets, clocks or randomness of its own: time comes in as `Instant`, nonces
//! and epochs from the caller.
#![forbid(unsafe_code)]

pub mod frame;
pub mod limits;
pub mod link;
pub mod membership;
pub mod replica;
