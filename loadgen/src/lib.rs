//! starling-loadgen: a load generator for XMPP servers.
//!
//! ```text
//!  run (parent) --spawns--> worker 0 .. W-1 (processes, each under the fd limit)
//!     ^  one JSON line per worker per second        |  glommio executor, users as tasks,
//!     |  (counters, latency histograms)             |  source addresses in 127.0.0.0/8
//!     +---------------------------------------------+
//!  parent: progress line, server /proc sampling, report (JSON, Markdown, SVG)
//! ```
//! Profiles are in [`profile`]; the client side of XMPP is `starling-wire`.

pub mod accounts;
pub mod client;
pub mod limit;
pub mod net;
pub mod profile;
pub mod report;
pub mod run;
pub mod stats;
pub mod worker;
