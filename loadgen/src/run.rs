//! The parent of a run: splits the users over worker processes (each under the
//! per-process open-file limit), starts them together, merges their reports once a
//! second, samples the server's `/proc/<pid>`, prints a progress line on a terminal,
//! and writes the report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::client::RunSettings;
use crate::profile;
use crate::stats::{self, Counters, Percentiles, Report};
use crate::worker::WorkerConfig;

/// How a run is set up, besides what every user shares.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: RunSettings,
    pub name: String,
    pub out: PathBuf,
    pub server_pid: Option<u32>,
    /// Sessions per worker process; default: the open-file hard limit minus a margin.
    pub sessions_per_worker: Option<u64>,
    /// Source addresses start here (one block of 254 per worker at most).
    pub source_base: Ipv4Addr,
    pub sources_per_worker: u32,
    pub command_line: String,
}

/// What a worker prints.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerLine {
    /// Keys are warm; waiting for the start time on stdin.
    Ready {
        warmup_seconds: f64,
    },
    Report(Box<Report>),
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    pub t: f64,
    pub sessions: u64,
    pub logins: u64,
    pub logins_per_second: u64,
    pub sent_per_second: u64,
    pub delivered_per_second: u64,
    #[serde(default)]
    pub presences_per_second: u64,
    pub errors: u64,
    pub login_latency_us: Percentiles,
    pub delivery_latency_us: Percentiles,
    pub server_rss_bytes: Option<u64>,
    pub server_cpu_percent: Option<f64>,
}

/// Server resource use sampled from /proc.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ServerSample {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

pub fn sample_server(pid: u32) -> Option<ServerSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based overall).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ServerSample { rss_bytes: rss_kb * 1024, cpu_seconds: ticks as f64 / hz })
}

/// The machine, for reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub fd_limit: u64,
    pub cpu: String,
}

pub fn machine() -> Machine {
    let memory_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        // All online CPUs, not only those this process may use (it may be pinned).
        // SAFETY: sysconf has no preconditions.
        nproc: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        memory_bytes: memory_kb * 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        fd_limit: crate::worker::raise_fd_limit(),
        cpu,
    }
}

/// Everything a run produced; `result.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub command: String,
    pub machine: Machine,
    pub settings: Option<RunSettings>,
    pub workers: usize,
    pub warmup_seconds: f64,
    pub timeline: Vec<Second>,
    pub totals: Counters,
    pub login_latency_us: Percentiles,
    pub delivery_latency_us: Percentiles,
    pub summary: Summary,
    pub notes: Vec<String>,
}

/// The figures reports lead with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub peak_sessions: u64,
    /// Logins completed per second over the ramp (first to last login).
    pub login_rate: f64,
    /// Highest logins completed in one second.
    pub login_rate_peak: u64,
    /// Messages delivered per second over the messaging window.
    pub delivered_rate: f64,
    pub sent: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Sent, neither delivered nor bounced.
    pub lost: u64,
    pub server_rss_start_bytes: Option<u64>,
    pub server_rss_peak_sessions_bytes: Option<u64>,
    /// (RSS at peak sessions - RSS at start) / peak sessions.
    pub server_bytes_per_session: Option<f64>,
    pub server_cpu_us_per_login: Option<f64>,
    pub server_cpu_us_per_delivered: Option<f64>,
    /// Presence stanzas received per second from the first login to 5 s after the
    /// last (the login storm and its presence fan-out).
    #[serde(default)]
    pub presence_rate: f64,
    #[serde(default)]
    pub presences: u64,
    /// `roster-setup`: users whose roster is complete, and mutual contacts in all.
    #[serde(default)]
    pub rosters_complete: u64,
    #[serde(default)]
    pub roster_items_mutual: u64,
}

/// Runs the load and writes the report into `options.out`.
pub fn run(options: &RunOptions) -> Result<RunResult, String> {
    let settings = &options.settings;
    let machine = machine();
    let per_worker = options.sessions_per_worker.unwrap_or(machine.fd_limit.saturating_sub(100)).max(1);
    let workers = settings.users.div_ceil(per_worker).max(1);
    let shares = profile::split(settings.users, settings.first_user, workers, settings.profile.login_rate);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (lines, incoming) = mpsc::channel::<(usize, WorkerLine)>();
    let mut children: Vec<Child> = Vec::new();
    for (index, share) in shares.iter().enumerate() {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(parsed) = serde_json::from_str::<WorkerLine>(&line) {
                    if lines.send((index, parsed)).is_err() {
                        return;
                    }
                }
            }
        });
        let sources = (0..options.sources_per_worker)
            .map(|i| crate::net::source_address(options.source_base, index as u32 * options.sources_per_worker + i))
            .collect();
        let config = WorkerConfig { index, settings: settings.clone(), share: *share, sources, start_unix_ms: 0 };
        let stdin = child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{}", serde_json::to_string(&config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        children.push(child);
    }
    drop(lines);
    let warmup_started = Instant::now();
    let mut ready = 0;
    let mut warmup = 0f64;
    while ready < children.len() {
        match incoming.recv_timeout(Duration::from_secs(3600)) {
            Ok((_, WorkerLine::Ready { warmup_seconds })) => {
                ready += 1;
                warmup = warmup.max(warmup_seconds);
            }
            Ok((index, WorkerLine::Report(report))) if report.fatal.is_some() => {
                return Err(format!("worker {index}: {}", report.fatal.unwrap_or_default()));
            }
            Ok(_) => {}
            Err(_) => return Err("workers did not get ready".into()),
        }
    }
    if warmup > 0.0 && std::io::stderr().is_terminal() {
        eprintln!("keys warm in {:.1} s ({} workers)", warmup_started.elapsed().as_secs_f64(), children.len());
    }
    let start_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0) + 500;
    for child in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "{start_unix_ms}");
        }
    }
    let started = Instant::now() + Duration::from_millis(500);
    let result = collect(options, &machine, &incoming, children.len(), started, warmup);
    // A worker that already exited with a failure crashed (the others are stopped).
    let mut failed = Vec::new();
    for (index, mut child) in children.into_iter().enumerate() {
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                failed.push(format!("worker {index} ({status})"));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut result = result?;
    if !failed.is_empty() {
        result.notes.push(format!("failed: {}", failed.join(", ")));
    }
    crate::report::write(&options.out, &result).map_err(|e| format!("writing the report: {e}"))?;
    if !failed.is_empty() {
        return Err(format!("{}; partial report in {}", result.notes.join("; "), options.out.display()));
    }
    Ok(result)
}

/// Merges worker lines second by second until every worker is done.
fn collect(
    options: &RunOptions,
    machine: &Machine,
    incoming: &mpsc::Receiver<(usize, WorkerLine)>,
    workers: usize,
    started: Instant,
    warmup: f64,
) -> Result<RunResult, String> {
    let settings = &options.settings;
    let deadline = started + Duration::from_secs_f64(settings.duration + 60.0);
    let mut latest: BTreeMap<usize, Counters> = BTreeMap::new();
    let mut done = vec![false; workers];
    let mut login_total = stats::histogram();
    let mut delivery_total = stats::histogram();
    let mut second_login = stats::histogram();
    let mut second_delivery = stats::histogram();
    let mut timeline: Vec<Second> = Vec::new();
    let mut previous = Counters::default();
    let mut previous_cpu = options.server_pid.and_then(sample_server);
    let server_start = previous_cpu;
    let mut next_tick = started + Duration::from_secs(1);
    let terminal = std::io::stderr().is_terminal();
    while done.iter().any(|d| !d) && Instant::now() < deadline {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match incoming.recv_timeout(wait) {
            Ok((index, WorkerLine::Report(report))) => {
                if let Some(fatal) = &report.fatal {
                    return Err(format!("worker {index}: {fatal}"));
                }
                latest.insert(index, report.counters);
                stats::add_pairs(&mut second_login, &report.login_latency);
                stats::add_pairs(&mut second_delivery, &report.delivery_latency);
                if report.done {
                    done[index] = true;
                }
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick += Duration::from_secs(1);
        let mut totals = Counters::default();
        for counters in latest.values() {
            totals.add(counters);
        }
        let sample = options.server_pid.and_then(sample_server);
        let cpu_percent = match (sample, previous_cpu) {
            (Some(now), Some(before)) => Some((now.cpu_seconds - before.cpu_seconds) * 100.0),
            _ => None,
        };
        previous_cpu = sample.or(previous_cpu);
        let second = Second {
            t: started.elapsed().as_secs_f64(),
            sessions: totals.sessions,
            logins: totals.logins,
            logins_per_second: totals.logins - previous.logins,
            sent_per_second: totals.messages_sent - previous.messages_sent,
            delivered_per_second: totals.messages_received - previous.messages_received,
            presences_per_second: totals.presences_received - previous.presences_received,
            errors: totals.errors(),
            login_latency_us: Percentiles::of(&second_login),
            delivery_latency_us: Percentiles::of(&second_delivery),
            server_rss_bytes: sample.map(|s| s.rss_bytes),
            server_cpu_percent: cpu_percent,
        };
        let _ = login_total.add(&second_login);
        let _ = delivery_total.add(&second_delivery);
        second_login.reset();
        second_delivery.reset();
        if terminal {
            progress(&second);
        }
        timeline.push(second);
        previous = totals;
    }
    if terminal {
        eprintln!();
    }
    let mut totals = Counters::default();
    for counters in latest.values() {
        totals.add(counters);
    }
    let _ = login_total.add(&second_login);
    let _ = delivery_total.add(&second_delivery);
    let mut notes = Vec::new();
    if done.iter().any(|d| !d) {
        notes.push("some workers did not finish (deadline passed, or they exited)".to_owned());
    }
    let summary = summarise(settings, &timeline, &totals, server_start);
    Ok(RunResult {
        name: options.name.clone(),
        command: options.command_line.clone(),
        machine: machine.clone(),
        settings: Some(settings.clone()),
        workers,
        warmup_seconds: warmup,
        timeline,
        totals,
        login_latency_us: Percentiles::of(&login_total),
        delivery_latency_us: Percentiles::of(&delivery_total),
        summary,
        notes,
    })
}

fn progress(second: &Second) {
    eprint!(
        "\r{:6.0}s sessions {:>8} logins/s {:>6} sent/s {:>7} delivered/s {:>7} p50 {:>7.2}ms p99 {:>7.2}ms errors {:>6}   ",
        second.t,
        second.sessions,
        second.logins_per_second,
        second.sent_per_second,
        second.delivered_per_second,
        second.delivery_latency_us.p50 as f64 / 1000.0,
        second.delivery_latency_us.p99 as f64 / 1000.0,
        second.errors
    );
    let _ = std::io::stderr().flush();
}

/// Derives the headline figures from the timeline.
pub fn summarise(
    settings: &RunSettings,
    timeline: &[Second],
    totals: &Counters,
    server_start: Option<ServerSample>,
) -> Summary {
    let peak = timeline.iter().max_by_key(|s| s.sessions);
    let peak_sessions = peak.map(|s| s.sessions).unwrap_or(0);
    let login_seconds: Vec<&Second> = timeline.iter().filter(|s| s.logins_per_second > 0).collect();
    // Workers time their first and last login completions exactly.
    let login_span = totals.last_login_ms.saturating_sub(totals.first_login_ms) as f64 / 1000.0;
    let login_rate = if totals.logins > 1 && login_span > 0.0 { (totals.logins - 1) as f64 / login_span } else { 0.0 };
    let start = settings.messaging_start().as_secs_f64() + 1.0;
    let end = settings.messaging_end().as_secs_f64();
    let window: Vec<&Second> = timeline.iter().filter(|s| s.t > start && s.t <= end).collect();
    let delivered_rate = if window.is_empty() {
        0.0
    } else {
        window.iter().map(|s| s.delivered_per_second).sum::<u64>() as f64 / window.len() as f64
    };
    let cpu = |seconds: &[&Second]| -> Option<f64> {
        let values: Vec<f64> = seconds.iter().filter_map(|s| s.server_cpu_percent).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / 100.0)
    };
    let login_cpu = cpu(&login_seconds);
    let logins_in_window: u64 = login_seconds.iter().map(|s| s.logins_per_second).sum();
    let message_cpu = cpu(&window);
    let delivered_in_window: u64 = window.iter().map(|s| s.delivered_per_second).sum();
    let rss_peak = peak.and_then(|s| s.server_rss_bytes);
    let bounced = totals.message_errors;
    let storm_start = totals.first_login_ms as f64 / 1000.0 - 1.0;
    let storm_end = totals.last_login_ms as f64 / 1000.0 + 5.0;
    let storm: Vec<&Second> = timeline.iter().filter(|s| s.t > storm_start && s.t <= storm_end).collect();
    let presences_in_storm: u64 = storm.iter().map(|s| s.presences_per_second).sum();
    let presence_rate = if storm.is_empty() { 0.0 } else { presences_in_storm as f64 / storm.len() as f64 };
    Summary {
        peak_sessions,
        login_rate,
        login_rate_peak: timeline.iter().map(|s| s.logins_per_second).max().unwrap_or(0),
        delivered_rate,
        sent: totals.messages_sent,
        delivered: totals.messages_received,
        bounced,
        lost: totals.messages_sent.saturating_sub(totals.messages_received + bounced),
        server_rss_start_bytes: server_start.map(|s| s.rss_bytes),
        server_rss_peak_sessions_bytes: rss_peak,
        server_bytes_per_session: match (server_start, rss_peak) {
            (Some(start), Some(peak)) if peak_sessions > 0 => {
                Some((peak.saturating_sub(start.rss_bytes)) as f64 / peak_sessions as f64)
            }
            _ => None,
        },
        server_cpu_us_per_login: login_cpu.filter(|_| logins_in_window > 0).map(|s| s * 1e6 / logins_in_window as f64),
        server_cpu_us_per_delivered: message_cpu
            .filter(|_| delivered_in_window > 0)
            .map(|s| s * 1e6 / delivered_in_window as f64),
        presence_rate,
        presences: totals.presences_received,
        rosters_complete: totals.rosters_complete,
        roster_items_mutual: totals.roster_items_mutual,
    }
}
