//! A worker process: one glommio executor holding its share of the users, under the
//! per-process open-file limit. Reads its [`WorkerConfig`] as JSON on stdin and writes
//! one [`crate::stats::Report`] line per second on stdout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::client::{self, RunSettings, Worker};
use crate::profile::{self, Share};
use crate::run::WorkerLine;
use crate::stats::{self, Counters, Report};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub index: usize,
    pub settings: RunSettings,
    pub share: Share,
    pub sources: Vec<IpAddr>,
    /// The run's start, as UNIX milliseconds (all workers start together).
    pub start_unix_ms: u64,
}

/// Raises the soft open-file limit to the hard one; returns the limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

fn emit(line: &WorkerLine) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, line);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// The worker process's main: config on stdin, keys warmed, "ready" out, the start
/// time in, then the run.
pub fn main() {
    let fatal = |message: String| {
        emit(&WorkerLine::Report(Box::new(Report { fatal: Some(message), done: true, ..Report::default() })))
    };
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return fatal("no configuration on stdin".into());
    }
    let mut config: WorkerConfig = match serde_json::from_str(&line) {
        Ok(config) => config,
        Err(error) => return fatal(format!("bad configuration: {error}")),
    };
    raise_fd_limit();
    let warming = Instant::now();
    let salted = client::warm_keys(&config.settings, &config.share);
    emit(&WorkerLine::Ready { warmup_seconds: warming.elapsed().as_secs_f64() });
    line.clear();
    let _ = std::io::stdin().read_line(&mut line);
    config.start_unix_ms = line.trim().parse().unwrap_or(0);
    run(config, salted);
}

fn run(config: WorkerConfig, salted: Vec<Vec<u8>>) {
    let start_unix = UNIX_EPOCH + Duration::from_millis(config.start_unix_ms);
    let wait = start_unix.duration_since(SystemTime::now()).unwrap_or_default();
    let start = Instant::now() + wait;
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(64 * 1024).make();
    let executor = match executor {
        Ok(executor) => executor,
        Err(error) => {
            let report = Report {
                worker: config.index,
                fatal: Some(format!("cannot start an executor: {error}")),
                done: true,
                ..Report::default()
            };
            emit(&WorkerLine::Report(Box::new(report)));
            return;
        }
    };
    let index = config.index;
    executor.run(async move {
        glommio::timer::sleep(start.saturating_duration_since(Instant::now())).await;
        let worker = Rc::new(Worker {
            settings: config.settings.clone(),
            share: config.share,
            start,
            sources: config.sources.clone(),
            counters: RefCell::new(Counters::default()),
            login_latency: RefCell::new(stats::histogram()),
            delivery_latency: RefCell::new(stats::histogram()),
            salted,
            pairs: RefCell::new(HashMap::new()),
            tokens: RefCell::new(HashMap::new()),
        });
        glommio::spawn_local(spawn_users(worker.clone())).detach();
        let end = Duration::from_secs_f64(worker.settings.duration) + Duration::from_secs(2);
        let mut tick = 1;
        loop {
            let next = Duration::from_secs(tick).min(end);
            glommio::timer::sleep(next.saturating_sub(start.elapsed())).await;
            let done = start.elapsed() >= end
                || (worker.counters.borrow().sessions == 0 && started_all(&worker) && past_end(&worker));
            emit(&WorkerLine::Report(Box::new(worker.report(index, done))));
            if done {
                break;
            }
            tick += 1;
        }
    });
}

fn started_all(worker: &Worker) -> bool {
    worker.counters.borrow().connect_attempts >= worker.share.count
}

fn past_end(worker: &Worker) -> bool {
    worker.start.elapsed().as_secs_f64() >= worker.settings.duration
}

/// Starts users at their login times, in small batches (a timer per user would not
/// keep up at high rates).
async fn spawn_users(worker: Rc<Worker>) {
    let share = worker.share;
    let mut next = 0u64;
    while next < share.count {
        let now = worker.start.elapsed();
        if now.as_secs_f64() >= worker.settings.duration {
            return;
        }
        while next < share.count && profile::login_at(&share, next) <= now {
            glommio::spawn_local(client::run_user(worker.clone(), share.first + next, next)).detach();
            next += 1;
        }
        if next < share.count {
            let due = profile::login_at(&share, next).saturating_sub(worker.start.elapsed());
            glommio::timer::sleep(due.clamp(Duration::from_millis(1), Duration::from_millis(10))).await;
        }
    }
}
