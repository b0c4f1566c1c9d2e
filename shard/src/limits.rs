//! Named limits of the per-core world. Defaults, reasons and costs are documented in
//! the server's `starling.example.toml` (`[limits]`), which fills these in.

use std::time::Duration;

/// Limits every core enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// From TCP accept to a bound resource. Default 10 s; a connection that sends
    /// nothing is closed after it.
    pub pre_auth_timeout: Duration,
    /// Connections per core; above it new connections are closed at once.
    pub connections_per_core_max: usize,
    /// Bytes queued for one client that does not read; above it, disconnect.
    pub queued_bytes_per_connection_max: usize,
    /// Resources one account may bind at once.
    pub sessions_per_user_max: usize,
}

impl Limits {
    pub fn for_tests() -> Limits {
        Limits {
            pre_auth_timeout: Duration::from_secs(2),
            connections_per_core_max: 10_000,
            queued_bytes_per_connection_max: 64 * 1024,
            sessions_per_user_max: 8,
        }
    }
}

/// Bytes read from a socket per read call (one per-core buffer, not per connection).
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Messages a core processes from one peer core before yielding.
pub const CORE_MESSAGES_PER_WAKEUP_MAX: usize = 256;

/// Reads one connection processes before yielding to other tasks.
pub const READS_PER_WAKEUP_MAX: usize = 4;

/// Capacity of each core-to-core channel, in batches.
pub const CORE_CHANNEL_BATCHES: usize = 1024;

/// Stanzas per core-to-core batch.
pub const STANZAS_PER_BATCH_MAX: usize = 512;

/// Jobs waiting for a DB thread before new ones are refused.
pub const DB_QUEUE_MAX: usize = 65_536;

/// How long a shutdown waits for connections to close before stopping the cores.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const _: () = assert!(READ_BUFFER_BYTES >= 16 * 1024 + 2048, "room for one full TLS record");

/// Recipients of directed presence one session remembers (RFC 6121 section 4.6),
/// told when it goes unavailable. Cost: one boxed JID each.
pub const DIRECTED_PRESENCE_MAX: usize = 1000;
