//! Traffic profiles, named after the published tests they reproduce, and their
//! schedules: when each user logs in, when and to whom it sends.
//!
//! Everything here is a pure function of the profile, the user's index and the
//! worker's share, so schedules are testable and identical on every run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The profiles (`--profile`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// Ramp to N sessions and hold them (memory per session, login rate).
    Connect,
    /// AMOC's one-to-one chat: each user sends a message every 10 s to one of its 10
    /// neighbours.
    AmocPm,
    /// ejabberd's 2M-users test: 550 logins/s (its roster of 18 comes with rosters).
    Ejabberd2m,
    /// Tigase's 1M-users test: 100 logins/s, one message per user per 400 s.
    Tigase1m,
    /// Closed loop: each sender keeps K messages in flight to its partner (finds the
    /// saturation point), or open loop at `--message-rate`.
    Throughput,
    /// Constant logins and logouts: each session lives `--session-seconds`, then
    /// logs out and the user logs in again.
    Churn,
    /// Builds the rosters the presence profiles need, through XMPP (so it works on any
    /// server): every user asks its `--roster` neighbours to subscribe and approves
    /// every request, so every pair ends `both`.
    RosterSetup,
}

impl std::str::FromStr for ProfileKind {
    type Err = String;
    fn from_str(text: &str) -> Result<ProfileKind, String> {
        Ok(match text {
            "connect" => ProfileKind::Connect,
            "amoc-pm" => ProfileKind::AmocPm,
            "ejabberd-2m" => ProfileKind::Ejabberd2m,
            "tigase-1m" => ProfileKind::Tigase1m,
            "throughput" => ProfileKind::Throughput,
            "churn" => ProfileKind::Churn,
            "roster-setup" => ProfileKind::RosterSetup,
            other => {
                return Err(format!(
                "unknown profile {other:?} (connect, amoc-pm, ejabberd-2m, tigase-1m, throughput, churn, roster-setup)"
            ))
            }
        })
    }
}

/// A profile with its parameters resolved (defaults filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub kind: ProfileKind,
    /// Logins per second over all workers.
    pub login_rate: f64,
    /// Each user sends one message per this period (periodic profiles).
    pub message_interval: Option<Duration>,
    /// Recipients are chosen among this many following users (amoc-pm), or uniformly
    /// at random when `None`.
    pub neighbours: Option<u64>,
    /// Closed loop: messages each sender keeps in flight.
    pub in_flight: Option<u32>,
    /// Open loop: messages per second over all senders.
    pub message_rate: Option<f64>,
    /// Churn: how long each session lives.
    pub session_lifetime: Option<Duration>,
    /// Contacts per user (`--roster`): the `roster/2` accounts before and after the
    /// user's account on a ring of `users * roster_spread` accounts. ejabberd's 2M test
    /// used 18 (all online); Tigase's 1M test 150 with 30 online (spread 5).
    #[serde(default)]
    pub roster: u64,
    /// Accounts per online user (`--roster-spread`): user n logs in as account
    /// `first + (n - first) * spread`, so a fifth of a roster is online with 5.
    #[serde(default = "one")]
    pub roster_spread: u64,
}

fn one() -> u64 {
    1
}

impl Profile {
    /// The profile's published parameters; `rate` overrides the login rate.
    pub fn new(kind: ProfileKind, rate: Option<f64>) -> Profile {
        let base = Profile {
            kind,
            login_rate: rate.unwrap_or(1000.0),
            message_interval: None,
            neighbours: None,
            in_flight: None,
            message_rate: None,
            session_lifetime: None,
            roster: 0,
            roster_spread: 1,
        };
        match kind {
            ProfileKind::Connect => base,
            ProfileKind::AmocPm => {
                Profile { message_interval: Some(Duration::from_secs(10)), neighbours: Some(10), ..base }
            }
            ProfileKind::Ejabberd2m => Profile { login_rate: rate.unwrap_or(550.0), ..base },
            ProfileKind::Tigase1m => {
                Profile { login_rate: rate.unwrap_or(100.0), message_interval: Some(Duration::from_secs(400)), ..base }
            }
            ProfileKind::Throughput => Profile { in_flight: Some(8), ..base },
            ProfileKind::Churn => Profile { session_lifetime: Some(Duration::from_secs(10)), ..base },
            ProfileKind::RosterSetup => base,
        }
    }

    pub fn sends_messages(&self) -> bool {
        self.message_interval.is_some() || self.in_flight.is_some() || self.message_rate.is_some()
    }

    /// How long the ramp of `users` takes.
    pub fn ramp(&self, users: u64) -> Duration {
        Duration::from_secs_f64(users as f64 / self.login_rate)
    }
}

/// One worker's share of the users: global indices `first..first + count`, ramped at
/// `rate` logins per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub first: u64,
    pub count: u64,
    pub rate: f64,
}

/// Splits `users` (global indices from `first_user`) over `workers` workers; the
/// login rate is split in proportion, so the whole ramp ends at the same time.
pub fn split(users: u64, first_user: u64, workers: u64, rate: f64) -> Vec<Share> {
    assert!(workers > 0, "at least one worker");
    let base = users / workers;
    let extra = users % workers;
    let mut first = first_user;
    (0..workers)
        .map(|w| {
            let count = base + u64::from(w < extra);
            let share = Share { first, count, rate: rate * count as f64 / users.max(1) as f64 };
            first += count;
            share
        })
        .filter(|share| share.count > 0)
        .collect()
}

/// When the worker's `local`-th user starts logging in, from the run's start.
pub fn login_at(share: &Share, local: u64) -> Duration {
    if share.rate <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(local as f64 / share.rate)
}

/// The account user `user` logs in as: users are spread over the account ring.
pub fn account(user: u64, first: u64, spread: u64) -> u64 {
    first + (user - first) * spread.max(1)
}

/// The roster of `account` on the ring `first..first + accounts`: the `roster/2`
/// accounts after it (which it asks to subscribe to) and before it (which ask it).
pub fn contacts(account: u64, first: u64, accounts: u64, roster: u64) -> (Vec<u64>, Vec<u64>) {
    let half = (roster / 2).min(accounts.saturating_sub(1) / 2);
    let at = account - first;
    let following = (1..=half).map(|k| first + (at + k) % accounts).collect();
    let preceding = (1..=half).map(|k| first + (at + accounts - k) % accounts).collect();
    (following, preceding)
}

/// A deterministic 64-bit mix (splitmix64) for reproducible choices per user.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The recipient of the `n`-th message of user `user` among `first..first+users`:
/// one of the following `neighbours` users (cyclic), or any other user at random.
pub fn recipient(user: u64, n: u64, first: u64, users: u64, neighbours: Option<u64>) -> u64 {
    debug_assert!(users >= 2, "messages need two users");
    let offset = match neighbours {
        Some(k) => 1 + n % k.min(users - 1),
        None => 1 + mix(user ^ (n << 32)) % (users - 1),
    };
    first + (user - first + offset) % users
}

/// When a periodic sender sends its first message, after `start` (messaging starts
/// when every user is online): a per-user offset spreads senders over one period.
pub fn first_send(user: u64, interval: Duration) -> Duration {
    let nanos = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(mix(user) % nanos)
}

/// Closed-loop pairs: even users send to the next user; odd users only receive.
pub fn partner(user: u64, first: u64) -> Option<u64> {
    user.checked_sub(first)?.is_multiple_of(2).then_some(user + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares cover every user exactly once and their rates add up to the total.
    #[test]
    fn split_covers_users_and_rate() {
        let shares = split(10, 1, 3, 100.0);
        assert_eq!(shares.iter().map(|s| s.count).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!(shares.iter().map(|s| s.first).collect::<Vec<_>>(), vec![1, 5, 8]);
        let rate: f64 = shares.iter().map(|s| s.rate).sum();
        assert!((rate - 100.0).abs() < 1e-9);
        // Every share's ramp ends together.
        let ends: Vec<f64> = shares.iter().map(|s| s.count as f64 / s.rate).collect();
        assert!(ends.iter().all(|e| (e - 0.1).abs() < 1e-9), "{ends:?}");
        assert_eq!(split(2, 0, 5, 10.0).len(), 2, "workers without users are dropped");
    }

    /// Logins are spaced at the worker's rate.
    #[test]
    fn login_times_follow_the_rate() {
        let share = Share { first: 0, count: 100, rate: 50.0 };
        assert_eq!(login_at(&share, 0), Duration::ZERO);
        assert_eq!(login_at(&share, 50), Duration::from_secs(1));
        assert_eq!(Profile::new(ProfileKind::Ejabberd2m, None).login_rate, 550.0);
        assert_eq!(Profile::new(ProfileKind::Tigase1m, None).ramp(1000), Duration::from_secs(10));
    }

    /// amoc-pm recipients are the 10 following users, wrapping around, never oneself.
    #[test]
    fn neighbours_wrap_and_exclude_self() {
        let chosen: Vec<u64> = (0..10).map(|n| recipient(18, n, 1, 20, Some(10))).collect();
        assert_eq!(chosen, vec![19, 20, 1, 2, 3, 4, 5, 6, 7, 8]);
        for n in 0..1000 {
            let r = recipient(5, n, 1, 20, None);
            assert!(r != 5 && (1..=20).contains(&r));
        }
        assert_eq!(recipient(1, 0, 1, 2, Some(10)), 2);
    }

    /// First sends spread over one period, deterministically.
    #[test]
    fn first_sends_spread_over_the_period() {
        let interval = Duration::from_secs(10);
        let offsets: Vec<Duration> = (0..1000).map(|u| first_send(u, interval)).collect();
        assert!(offsets.iter().all(|o| *o < interval));
        let early = offsets.iter().filter(|o| **o < Duration::from_secs(5)).count();
        assert!((400..600).contains(&early), "{early}");
        assert_eq!(first_send(7, interval), first_send(7, interval));
    }

    /// Rosters: neighbours on the account ring, wrapping, never oneself; with a spread
    /// of 5 a fifth of a roster is online.
    #[test]
    fn roster_neighbours() {
        assert_eq!(contacts(1, 1, 10, 4), (vec![2, 3], vec![10, 9]));
        let (after, before) = contacts(account(3, 1, 5), 1, 50, 150);
        assert_eq!(account(3, 1, 5), 11);
        assert_eq!(after.len(), 24, "a ring of 50 holds 24 on each side");
        assert!(!after.contains(&11) && !before.contains(&11));
        let (after, before) = contacts(account(100, 1, 5), 1, 5000, 150);
        let online = after.iter().chain(&before).filter(|a| (*a - 1) % 5 == 0).count();
        assert_eq!(online, 30, "30 of 150 contacts are accounts of online users");
    }

    /// Pairs: even users send to the next one.
    #[test]
    fn closed_loop_pairs() {
        assert_eq!(partner(10, 10), Some(11));
        assert_eq!(partner(11, 10), None);
        assert_eq!(partner(9, 10), None, "users before the first have no partner");
    }
}
