//! Named limits and timings of replication. Each says what it bounds and why.

use std::time::Duration;

/// Largest frame, header included. Default 1 MiB: a route frame carries one stanza
/// (at most the stanza limit, 64 KiB by default) and a session entry is under 2 KiB;
/// the limit only stops a broken or hostile peer from making us buffer without end.
pub const FRAME_BYTES_MAX: u32 = 1024 * 1024;

/// Largest frame read before the handshake is done. The largest handshake frame
/// (`Hello` with two names of [`NAME_BYTES_MAX`]) is 565 bytes; an unauthenticated
/// connection can make us hold no more than this.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 1024;

/// Bytes of the integrity tag after every frame once a link is established (the
/// AES-256-GCM tag, as in TLS).
pub const TAG_BYTES: usize = 16;

/// Longest node or cluster name.
pub const NAME_BYTES_MAX: usize = 255;

/// Bytes queued on one link before the sender is told to wait (backpressure). A
/// snapshot is streamed in pieces under this bound.
pub const LINK_QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A heartbeat is sent after this much silence on a link.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);

/// A link with no frame for this long is dead (a peer that stopped, or a partition
/// that drops packets without closing the connection).
pub const LINK_DEAD_AFTER: Duration = Duration::from_millis(3000);

/// A dead owner's entries are dropped this long after its link went down, so a brief
/// reconnect does not flap every session of that owner.
pub const OWNER_GRACE: Duration = Duration::from_millis(1000);

/// The handshake must finish within this time (a peer that connects and says
/// nothing is closed after it).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Replication connections of one core still in their handshake; past it the
/// oldest is closed to make room for a new one. A cluster of N nodes with C cores each opens N x C links in
/// all, each handshake lasting one round trip, so 64 is far above what peers need
/// and bounds what strangers can hold (64 x 1 KiB, no CPU while idle).
pub const HANDSHAKES_PER_CORE_MAX: usize = 64;

/// Of those, the places one source address may hold; past it that address's own
/// oldest is closed. A peer node opens one link per core of its own to each node, and
/// they spread over our cores, so a peer needs one or two places per core at a time.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 8;

/// Delay before reconnecting a link that failed (doubles to the maximum).
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

const _: () = assert!(FRAME_BYTES_MAX as usize <= LINK_QUEUE_BYTES_MAX);
const _: () = assert!(HANDSHAKE_FRAME_BYTES_MAX >= 4 + 1 + 2 + 2 * (2 + NAME_BYTES_MAX as u32) + 2 + 2 + 8 + 32);
const _: () = assert!(HEARTBEAT_INTERVAL.as_millis() * 2 < LINK_DEAD_AFTER.as_millis());
// "Within 5 s the others drop its sessions": silence detection plus grace.
const _: () = assert!(LINK_DEAD_AFTER.as_millis() + OWNER_GRACE.as_millis() <= 5000);
