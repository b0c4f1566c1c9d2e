//! Named limits of the per-core world. Defaults, reasons and costs are documented in
//! the server's `starling.example.toml` (`[limits]`), which fills these in.

use std::time::Duration;

/// Limits every core enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// From TCP accept to a bound resource. Default 10 s; a connection that sends
    /// nothing is closed after it.
    pub pre_auth_timeout: Duration,
    /// Connections per core; above it new connections are closed at once. The
    /// server caps it so that every core's share fits the process's open-file limit
    /// (`guard::connections_per_core_for_fd_limit`).
    pub connections_per_core_max: usize,
    /// Open connections from one source address (all cores); 0: no limit.
    pub connections_per_address_max: u32,
    /// Failed authentications that ban a source address (ejabberd's mod_fail2ban).
    pub fail2ban: Option<crate::guard::Fail2Ban>,
    /// Stanzas per second one account may send (all its sessions on this node
    /// together); a session over it is not read until the account is within it.
    pub account_stanza_shaper: Option<crate::guard::Shaper>,
    /// Bytes queued for one client above which whoever sends to it waits (stops
    /// being read) until it drains. Nothing is dropped and nobody is disconnected for it.
    pub queued_bytes_per_connection_max: usize,
    /// A client that takes no byte of its waiting output for this long is disconnected
    /// (`connection-timeout`): it stopped reading. ejabberd's `send_timeout`.
    pub send_timeout: Duration,
    /// Resources one account may bind at once.
    pub sessions_per_user_max: usize,
    /// XEP-0077: one in-band registration per client IP address per this long, across
    /// the cluster (`[modules.mod_register] registration_timeout`); zero: no limit.
    pub registration_interval: Duration,
}

impl Limits {
    pub fn for_tests() -> Limits {
        Limits {
            pre_auth_timeout: Duration::from_secs(2),
            connections_per_core_max: 10_000,
            connections_per_address_max: 0,
            fail2ban: None,
            account_stanza_shaper: None,
            queued_bytes_per_connection_max: 64 * 1024,
            send_timeout: Duration::from_secs(3),
            sessions_per_user_max: 8,
            registration_interval: Duration::from_secs(600),
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

/// Stanza bytes one core queues for another (including what is in the channel)
/// above which the sessions that add more wait (`flow.rs`). Cost: at most this much
/// per pair of cores, plus one stanza per sender.
pub const OUTBOX_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Bytes in one core-to-core batch before a new one starts: the batch's end offsets
/// are `u32` (one batch stays far below 4 GiB whatever the stanza limit).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// IQs to other accounts answered from storage at once per core; past it the
/// requester gets `resource-constraint` (the answers run beside its session, which
/// reads on). Cost: one task and one answer each.
pub const ON_BEHALF_IN_FLIGHT_MAX: usize = 256;

/// Stanzas per core-to-core batch.
pub const STANZAS_PER_BATCH_MAX: usize = 512;

/// Jobs waiting for a DB thread before new ones are refused.
pub const DB_QUEUE_MAX: usize = 65_536;

/// How long a shutdown waits for connections to close before stopping the cores.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const _: () = assert!(READ_BUFFER_BYTES >= 16 * 1024 + 2048, "room for one full TLS record");
const _: () = assert!(BATCH_BYTES_MAX + 16 * 1024 * 1024 < u32::MAX as usize, "batch ends fit u32");

/// Recipients of directed presence one session remembers (RFC 6121 section 4.6),
/// told when it goes unavailable. Cost: one boxed JID each.
pub const DIRECTED_PRESENCE_MAX: usize = 1000;

/// Contacts one roster holds, counting contacts known only by a pending subscription
/// request, so a flood of requests is bounded too. Beyond it a roster set gets
/// `resource-constraint` and new requests are dropped. Cost: ~150 B per cached item.
pub const ROSTER_ITEMS_MAX: usize = 2000;

/// Offline messages stored per account (XEP-0160); beyond it the sender gets
/// `resource-constraint` (ejabberd's and MongooseIM's bounce policy).
pub const OFFLINE_MESSAGES_PER_USER_MAX: usize = 1000;

/// Bytes of one stored document: a vCard (XEP-0054), one private XML child (XEP-0049).
/// Larger ones get `not-acceptable`. Half the default stanza limit (64 KiB), so a
/// client can learn the limit without losing its stream; avatars belong in XEP-0084.
pub const DOCUMENT_BYTES_MAX: usize = 32 * 1024;

/// JIDs one block list holds (XEP-0191); beyond it `resource-constraint`.
pub const BLOCKED_JIDS_MAX: usize = 1000;

/// Messages one archive query page returns at most (XEP-0313 with XEP-0059 `max`).
pub const ARCHIVE_PAGE_MAX: usize = 250;

/// Items one PEP node keeps at most (`pubsub#max_items`, `max` means this).
pub const PEP_ITEMS_PER_NODE_MAX: usize = 1000;

/// Entity-capability queries a core has in flight (XEP-0115); past it new `ver`s wait
/// for the client's next presence. Cost: one id and `ver` each.
pub const CAPS_QUERIES_MAX: usize = 4096;

/// Verified capability hashes a core remembers; cleared when full. Cost: one `ver` and
/// its `+notify` node names each.
pub const CAPS_CACHE_MAX: usize = 4096;
