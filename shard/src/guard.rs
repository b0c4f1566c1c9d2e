//! Abuse resistance at the edge of a node: traffic shapers, connection limits per
//! source address, and the authentication throttle (ejabberd's mod_fail2ban).
//!
//! Shapers are GCRA token buckets (one `Instant` of state each): a charge of `n` units
//! at `max_rate` units/s moves the bucket's "theoretical arrival time" `n / max_rate`
//! seconds on, and the charger waits while that time is more than `burst_size /
//! max_rate` seconds ahead. Over any interval `T` a shaped sender gets at most
//! `burst_size + max_rate x T` units through (plus the charge that crossed the line).
//!
//! [`AddressGuard`] is shared by every core of a node: a fixed table of slots of
//! atomics indexed by a keyed hash (SipHash with a random key per process) of the
//! source address, so cores never lock and memory never grows (16 bytes x
//! [`ADDRESS_SLOTS`]). The approximation: two addresses in one slot share its
//! connection count (both are limited sooner, never later); failure counts and bans
//! carry a 32-bit tag of the address, so another address in the same slot is not
//! banned by them (it resets the slot's count instead: an attacker whose slot is
//! shared loses at most its count, never gains a ban-free pass once banned).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket's rate and depth, in units per second and units (bytes for a
/// connection's traffic, stanzas for an account's). MongooseIM's `max_rate`, and
/// ejabberd's `burst_size` (default: one second's worth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaper {
    pub max_rate: u32,
    pub burst_size: u32,
}

impl Shaper {
    /// Charges `units` to the bucket whose state is `tat` (start it at any past or
    /// present instant). `Some(t)`: the charger must take nothing more before `t`.
    pub fn charge(&self, tat: &mut Instant, units: u64, now: Instant) -> Option<Instant> {
        let rate = u64::from(self.max_rate.max(1));
        let cost = Duration::from_nanos(units.saturating_mul(1_000_000_000) / rate);
        let allowance = Duration::from_nanos(u64::from(self.burst_size).saturating_mul(1_000_000_000) / rate);
        *tat = (*tat).max(now) + cost;
        let resume = tat.checked_sub(allowance).unwrap_or(now);
        (resume > now).then_some(resume)
    }
}

/// Slots of the address table: 65,536 x 24 bytes = 1.5 MiB per node.
pub const ADDRESS_SLOTS: usize = 1 << 16;

/// ejabberd's mod_fail2ban: `c2s_max_auth_failures` failed authentications from one
/// address within `c2s_auth_ban_lifetime` ban it for `c2s_auth_ban_lifetime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fail2Ban {
    pub max_auth_failures: u32,
    pub ban_lifetime: Duration,
}

/// What one client holds: its IPv4 address, or its IPv6 /64 (one host's, or one
/// subscriber's, allocation: counting single IPv6 addresses would let one machine
/// use 2^64 of them).
fn network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Per-source-address state shared by a node's cores (lock-free).
pub struct AddressGuard {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    started: Instant,
    connections_per_address_max: u32,
    fail2ban: Option<Fail2Ban>,
}

#[derive(Default)]
struct Slot {
    connections: AtomicU32,
    /// tag:32 | failure bucket's theoretical arrival time in deciseconds since start:32
    failures: AtomicU64,
    /// tag:32 | banned until, deciseconds since start:32 (0: not banned)
    banned: AtomicU64,
}

/// Why a new connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address has `connections_per_address_max` connections open.
    TooManyConnections,
    /// The address failed authentication too often; banned until the time given.
    Banned,
}

/// A connection counted against its address; uncounts it when dropped (on whichever
/// core the connection ends).
pub struct Admitted {
    guard: Arc<AddressGuard>,
    slot: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(slot) = self.guard.slots.get(self.slot) {
            slot.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("slot", &self.slot).finish()
    }
}

const CAS_RETRIES: usize = 16;

impl AddressGuard {
    /// `connections_per_address_max` of 0 means no limit; `fail2ban` `None` means no
    /// throttle.
    pub fn new(connections_per_address_max: u32, fail2ban: Option<Fail2Ban>) -> AddressGuard {
        AddressGuard {
            slots: (0..ADDRESS_SLOTS).map(|_| Slot::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            started: Instant::now(),
            connections_per_address_max,
            fail2ban,
        }
    }

    fn locate(&self, address: IpAddr) -> (usize, u64) {
        let hash = self.hasher.hash_one(network(address));
        // Low bits pick the slot; the high 32 are the tag.
        ((hash as usize) % ADDRESS_SLOTS, hash >> 32)
    }

    fn deciseconds(&self, now: Instant) -> u64 {
        // Starts at 1 so that 0 means "never".
        (now.saturating_duration_since(self.started).as_millis() / 100) as u64 + 1
    }

    /// Admits a new connection from `address`, or says why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let (index, tag) = self.locate(address);
        let Some(slot) = self.slots.get(index) else { return Err(Refusal::TooManyConnections) };
        if self.fail2ban.is_some() {
            let banned = slot.banned.load(Ordering::Relaxed);
            if banned >> 32 == tag && (banned & 0xffff_ffff) > self.deciseconds(now) {
                return Err(Refusal::Banned);
            }
        }
        let before = slot.connections.fetch_add(1, Ordering::Relaxed);
        if self.connections_per_address_max > 0 && before >= self.connections_per_address_max {
            slot.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TooManyConnections);
        }
        Ok(Admitted { guard: self.clone(), slot: index })
    }

    /// Counts a failed authentication from `address`; `true` if that banned it (only
    /// the failure that starts a ban, not those after it).
    pub fn auth_failed(&self, address: IpAddr, now: Instant) -> bool {
        let Some(fail2ban) = self.fail2ban else { return false };
        let (index, tag) = self.locate(address);
        let Some(slot) = self.slots.get(index) else { return false };
        let now_ds = self.deciseconds(now);
        let lifetime_ds = (fail2ban.ban_lifetime.as_millis() / 100).max(1) as u64;
        // Leaky bucket: each failure costs lifetime / max; the bucket holds `max`.
        let max = u64::from(fail2ban.max_auth_failures.max(1));
        let cost = lifetime_ds.div_ceil(max).max(1);
        for _ in 0..CAS_RETRIES {
            let current = slot.failures.load(Ordering::Relaxed);
            let tat = if current >> 32 == tag { current & 0xffff_ffff } else { 0 };
            let next = tat.max(now_ds) + cost;
            let packed = (tag << 32) | (next & 0xffff_ffff);
            if slot.failures.compare_exchange(current, packed, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                continue;
            }
            // Over the bucket: more than `max` failures within the lifetime.
            if next.saturating_sub(now_ds) > cost * max {
                let until = (now_ds + lifetime_ds) & 0xffff_ffff;
                let before = slot.banned.swap((tag << 32) | until, Ordering::Relaxed);
                let was_banned = before >> 32 == tag && (before & 0xffff_ffff) > now_ds;
                return !was_banned;
            }
            return false;
        }
        false
    }

    /// Whether `address` is banned now.
    pub fn is_banned(&self, address: IpAddr, now: Instant) -> bool {
        if self.fail2ban.is_none() {
            return false;
        }
        let (index, tag) = self.locate(address);
        let Some(slot) = self.slots.get(index) else { return false };
        let banned = slot.banned.load(Ordering::Relaxed);
        banned >> 32 == tag && (banned & 0xffff_ffff) > self.deciseconds(now)
    }
}

/// One log line per `interval` at most for a repeated event; the lines say how many
/// were left out. Per core (no sharing).
pub struct LogEvery {
    interval: Duration,
    last: std::cell::Cell<Option<Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl LogEvery {
    pub const fn new(interval: Duration) -> LogEvery {
        LogEvery { interval, last: std::cell::Cell::new(None), suppressed: std::cell::Cell::new(0) }
    }

    /// `Some(n)`: log now, mentioning the `n` events left out since the last line.
    pub fn tick(&self, now: Instant) -> Option<u64> {
        if self.last.get().is_some_and(|last| now.saturating_duration_since(last) < self.interval) {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

/// The largest number of connections a core may hold so that the process stays
/// within its open-file limit: `(RLIMIT_NOFILE soft - reserve) / cores`, where the
/// reserve keeps room for listeners, replication links, the database and logs.
pub fn connections_per_core_for_fd_limit(cores: usize) -> Option<usize> {
    let mut limit = soft_open_file_limit();
    if limit == 0 {
        return None;
    }
    limit = limit.saturating_sub(FD_RESERVE);
    Some((limit / cores.max(1) as u64).max(1) as usize)
}

/// File descriptors kept out of the connection budget: listeners (cores x listeners),
/// replication links (cores x peers x 2), DB connections, the admin port's
/// connections, log and data files. 1,000 covers a 64-core node in a 4-node cluster.
pub const FD_RESERVE: u64 = 1000;

/// The soft open-file limit (0 when it cannot be read).
fn soft_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Over any run of charges, what gets through by time T is at most burst + rate x T
    /// plus the charge that crossed the line (the shaper's promise, which the README
    /// quotes).
    #[test]
    fn shaper_lets_through_at_most_burst_plus_rate() {
        let shaper = Shaper { max_rate: 1000, burst_size: 5000 };
        let start = Instant::now();
        let mut tat = start;
        let mut now = start;
        let mut accepted = 0u64;
        for _ in 0..10_000 {
            accepted += 700;
            if let Some(resume) = shaper.charge(&mut tat, 700, now) {
                now = resume;
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            assert!(accepted as f64 <= 5000.0 + 1000.0 * elapsed + 700.0 + 1.0, "{accepted} by {elapsed}");
        }
        // And it is not stricter than that: 10 s of flood pass about 10,000 + 5,000.
        let elapsed = now.duration_since(start).as_secs_f64();
        assert!(accepted as f64 >= 1000.0 * elapsed, "{accepted} by {elapsed}");
    }

    #[test]
    fn a_burst_passes_without_waiting() {
        let shaper = Shaper { max_rate: 10, burst_size: 100 };
        let now = Instant::now();
        let mut tat = now;
        assert_eq!(shaper.charge(&mut tat, 100, now), None);
        assert!(shaper.charge(&mut tat, 10, now).is_some());
    }

    proptest! {
        /// Any sequence of charges at any times: a wait asked for is in the future
        /// and never past the bucket's own time (no overflow, no panic).
        #[test]
        fn shaper_waits_are_bounded(charges in proptest::collection::vec((0u64..100_000, 0u64..2_000_000), 1..100),
                                    rate in 1u32..1_000_000, burst in 0u32..1_000_000) {
            let shaper = Shaper { max_rate: rate, burst_size: burst };
            let start = Instant::now();
            let mut tat = start;
            let mut now = start;
            for (units, gap_us) in charges {
                now += Duration::from_micros(gap_us);
                if let Some(resume) = shaper.charge(&mut tat, units, now) {
                    prop_assert!(resume > now && resume <= tat);
                    now = resume;
                }
            }
        }
    }

    #[test]
    fn connections_per_address_are_limited_and_released() {
        let guard = Arc::new(AddressGuard::new(2, None));
        let now = Instant::now();
        let a: IpAddr = "127.0.0.7".parse().unwrap();
        let b: IpAddr = "127.0.0.8".parse().unwrap();
        let first = guard.admit(a, now).unwrap();
        let _second = guard.admit(a, now).unwrap();
        assert_eq!(guard.admit(a, now).unwrap_err(), Refusal::TooManyConnections);
        let _other = guard.admit(b, now).expect("another address has its own count");
        drop(first);
        guard.admit(a, now).expect("a closed connection frees its place");
    }

    #[test]
    fn failures_past_the_threshold_ban_for_the_lifetime() {
        let fail2ban = Fail2Ban { max_auth_failures: 5, ban_lifetime: Duration::from_secs(60) };
        let guard = Arc::new(AddressGuard::new(0, Some(fail2ban)));
        let start = Instant::now();
        let attacker: IpAddr = "127.0.0.66".parse().unwrap();
        let user: IpAddr = "127.0.0.9".parse().unwrap();
        let banned: Vec<bool> = (0..8).map(|_| guard.auth_failed(attacker, start)).collect();
        let expected = [false, false, false, false, false, true, false, false];
        assert_eq!(banned, expected, "the 6th failure within the lifetime bans, once");
        assert_eq!(guard.admit(attacker, start).unwrap_err(), Refusal::Banned);
        assert!(guard.admit(user, start).is_ok(), "other addresses are not affected");
        assert!(guard.is_banned(attacker, start + Duration::from_secs(59)));
        assert!(!guard.is_banned(attacker, start + Duration::from_secs(61)), "the ban ends");
        // Failures spread over time leak out of the bucket: 5 per minute never ban.
        let slow: IpAddr = "127.0.0.10".parse().unwrap();
        for i in 0..50u64 {
            assert!(!guard.auth_failed(slow, start + Duration::from_secs(12 * i + 1)), "failure {i}");
        }
    }

    /// An IPv6 /64 is one client; an IPv4-mapped address is its IPv4 address.
    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let guard = Arc::new(AddressGuard::new(1, None));
        let now = Instant::now();
        let _first = guard.admit("2001:db8:1:2::1".parse().unwrap(), now).unwrap();
        assert!(guard.admit("2001:db8:1:2:ffff::9".parse().unwrap(), now).is_err(), "same /64");
        let _other = guard.admit("2001:db8:1:3::1".parse().unwrap(), now).expect("another /64");
        let _v4 = guard.admit("192.0.2.1".parse().unwrap(), now).unwrap();
        assert!(guard.admit("::ffff:192.0.2.1".parse().unwrap(), now).is_err(), "mapped is the same client");
    }

    #[test]
    fn log_every_keeps_one_line_per_interval() {
        let log = LogEvery::new(Duration::from_secs(10));
        let start = Instant::now();
        let lines: Vec<_> = (0..1000).filter_map(|i| log.tick(start + Duration::from_millis(i * 10))).collect();
        assert_eq!(lines, vec![0]);
        assert_eq!(log.tick(start + Duration::from_secs(11)), Some(999));
    }
}
