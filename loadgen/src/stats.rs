//! What workers count and measure, and how the parent adds it up.
//!
//! A worker prints one [`Report`] line (JSON) per second on stdout: its counters so
//! far and the latencies recorded since its previous line. The parent merges them
//! into a timeline and totals.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Monotonic counters of one worker (or, summed, of the run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub logins: u64,
    pub login_failures: u64,
    /// Stream errors received from the server (any condition).
    pub stream_errors: u64,
    /// Connections the server closed while the session was up.
    pub disconnects: u64,
    /// Sessions the load generator ended itself (churn, end of run).
    pub logouts: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Stanza errors received in answer to our messages.
    pub message_errors: u64,
    /// Sessions established right now.
    pub sessions: u64,
    /// Logins that had to compute PBKDF2 because no cached key matched.
    pub cold_logins: u64,
    /// When the first and last logins completed, in ms since the start (0: none).
    pub first_login_ms: u64,
    pub last_login_ms: u64,
    /// Presence stanzas received (broadcasts, probe answers, subscriptions).
    #[serde(default)]
    pub presences_received: u64,
    /// `roster-setup`: users whose final roster has every contact with `both`.
    #[serde(default)]
    pub rosters_complete: u64,
    /// `roster-setup`: contacts with `both` over all final rosters.
    #[serde(default)]
    pub roster_items_mutual: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.connect_attempts += other.connect_attempts;
        self.connect_failures += other.connect_failures;
        self.logins += other.logins;
        self.login_failures += other.login_failures;
        self.stream_errors += other.stream_errors;
        self.disconnects += other.disconnects;
        self.logouts += other.logouts;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.message_errors += other.message_errors;
        self.sessions += other.sessions;
        self.cold_logins += other.cold_logins;
        self.presences_received += other.presences_received;
        self.rosters_complete += other.rosters_complete;
        self.roster_items_mutual += other.roster_items_mutual;
        if other.first_login_ms > 0 {
            self.first_login_ms = if self.first_login_ms == 0 {
                other.first_login_ms
            } else {
                self.first_login_ms.min(other.first_login_ms)
            };
        }
        self.last_login_ms = self.last_login_ms.max(other.last_login_ms);
    }

    /// Problems the run ran into, for the progress line.
    pub fn errors(&self) -> u64 {
        self.connect_failures + self.login_failures + self.stream_errors + self.disconnects + self.message_errors
    }
}

/// Latencies in microseconds, up to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Invariant: these bounds are valid for hdrhistogram.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// A histogram as (value, count) pairs, the form workers send.
pub fn to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = histogram.record_n(value.clamp(1, 3_600_000_000), count);
    }
}

/// One line from a worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub worker: usize,
    /// Seconds since the run's start.
    pub elapsed: f64,
    pub counters: Counters,
    /// Login latencies (connect to bound resource) since the previous line, µs.
    pub login_latency: Vec<(u64, u64)>,
    /// Message delivery latencies since the previous line, µs.
    pub delivery_latency: Vec<(u64, u64)>,
    /// Set on the worker's last line.
    pub done: bool,
    /// Set when the worker could not run at all.
    pub fatal: Option<String>,
}

/// Latency percentiles for reports, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms survive the trip through pairs; counters add up field by field.
    #[test]
    fn histograms_and_counters_merge() {
        let mut a = histogram();
        for v in [10, 20, 30, 1000] {
            a.record(v).unwrap();
        }
        let mut b = histogram();
        add_pairs(&mut b, &to_pairs(&a));
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(b.len(), 8);
        assert_eq!(Percentiles::of(&b).max, Percentiles::of(&a).max);
        let mut total = Counters { logins: 2, messages_sent: 5, ..Counters::default() };
        total.add(&Counters { logins: 3, message_errors: 1, ..Counters::default() });
        assert_eq!((total.logins, total.messages_sent, total.errors()), (5, 5, 1));
    }
}
