//! `starling-loadgen`: drive an XMPP server with many sessions and report.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use argh::FromArgs;
use starling_loadgen::client::{AuthMode, LoginMode, RunSettings, TlsMode};
use starling_loadgen::profile::{Profile, ProfileKind};
use starling_loadgen::run::{RunOptions, RunResult};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A load generator for XMPP servers (Starling, ejabberd, Prosody, ...).
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
// Parsed once at startup: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    Run(Run),
    Accounts(Accounts),
    Limit(Limit),
    Compare(Compare),
    Worker(Worker),
}

/// Run a profile against a server and write a report.
#[derive(FromArgs)]
#[argh(subcommand, name = "run")]
struct Run {
    /// connect, amoc-pm, ejabberd-2m, tigase-1m, throughput, churn or roster-setup
    #[argh(option)]
    profile: ProfileKind,
    /// how many users (sessions)
    #[argh(option)]
    users: u64,
    /// server address, only 127.0.0.0/8 (default 127.0.0.1:5222); repeat it for the
    /// nodes of a cluster: user n logs in to the (n mod count)-th
    #[argh(option)]
    target: Vec<SocketAddr>,
    /// the XMPP domain
    #[argh(option, default = "String::from(\"localhost\")")]
    domain: String,
    /// seconds until users log out (the run then ends)
    #[argh(option, default = "60.0")]
    duration: f64,
    /// report folder (default: bench-results/<date>-<name>)
    #[argh(option)]
    out: Option<PathBuf>,
    /// run name for the report (default: the profile)
    #[argh(option)]
    name: Option<String>,
    /// logins per second over all workers (default: the profile's)
    #[argh(option)]
    rate: Option<f64>,
    /// scram (cached client keys, default), scram-cold or plain
    #[argh(option, default = "AuthMode::Scram")]
    auth: AuthMode,
    /// user name template, {n} = user number (default user{n})
    #[argh(option, default = "String::from(\"user{n}\")")]
    user_template: String,
    /// password template (default pass{n})
    #[argh(option, default = "String::from(\"pass{n}\")")]
    password_template: String,
    /// first user number (default 1)
    #[argh(option, default = "1")]
    first_user: u64,
    /// throughput: messages in flight per sender (closed loop, default 8)
    #[argh(option)]
    in_flight: Option<u32>,
    /// throughput: open loop at this many messages per second instead
    #[argh(option)]
    message_rate: Option<f64>,
    /// churn: seconds each session lives (default 10)
    #[argh(option)]
    session_seconds: Option<f64>,
    /// message body size in bytes (default 64)
    #[argh(option, default = "64")]
    body_bytes: usize,
    /// server process id, to sample its memory and CPU from /proc
    #[argh(option)]
    server_pid: Option<u32>,
    /// sessions per worker process (default: open-file limit minus 100)
    #[argh(option)]
    sessions_per_worker: Option<u64>,
    /// first source address (default 127.1.0.0: 127.1.x.y)
    #[argh(option, default = "Ipv4Addr::new(127, 1, 0, 0)")]
    source_base: Ipv4Addr,
    /// source addresses per worker (default 4)
    #[argh(option, default = "4")]
    sources_per_worker: u32,
    /// salt seed used by `accounts` (default starling-loadgen)
    #[argh(option, default = "String::from(\"starling-loadgen\")")]
    salt_seed: String,
    /// PBKDF2 iterations used by `accounts` (default 4096)
    #[argh(option, default = "4096")]
    iterations: u32,
    /// send the legacy session request after binding
    #[argh(switch)]
    legacy_session: bool,
    /// TLS: none (default), starttls or direct (any certificate is accepted: loopback
    /// benchmarks only)
    #[argh(option, default = "TlsMode::None")]
    tls: TlsMode,
    /// login: legacy (SASL, restart, bind; default), sasl2 (SASL2 + Bind 2) or fast
    /// (SASL2, then XEP-0484 tokens on every later login of a user)
    #[argh(option, default = "LoginMode::Legacy")]
    login: LoginMode,
    /// enable XEP-0198 stream management (resumable) and acknowledge the server's
    /// requests
    #[argh(switch)]
    sm: bool,
    /// transport: tcp (default) or websocket (RFC 7395 at --ws-path; with --tls
    /// direct it is wss://)
    #[argh(option, default = "String::from(\"tcp\")")]
    transport: String,
    /// the WebSocket path (default /ws-xmpp)
    #[argh(option, default = "String::from(\"/ws-xmpp\")")]
    ws_path: String,
    /// contacts per user (build them once with --profile roster-setup)
    #[argh(option, default = "0")]
    roster: u64,
    /// accounts per online user on the roster ring (default 1: all contacts online)
    #[argh(option, default = "1")]
    roster_spread: u64,
}

/// Write a CSV of accounts with precomputed SCRAM keys for `starling account importUsers`.
#[derive(FromArgs)]
#[argh(subcommand, name = "accounts")]
struct Accounts {
    /// how many accounts
    #[argh(option)]
    users: u64,
    /// the CSV file to write
    #[argh(option)]
    out: PathBuf,
    /// first user number (default 1)
    #[argh(option, default = "1")]
    first_user: u64,
    /// the XMPP domain
    #[argh(option, default = "String::from(\"localhost\")")]
    domain: String,
    /// user name template (default user{n})
    #[argh(option, default = "String::from(\"user{n}\")")]
    user_template: String,
    /// password template (default pass{n})
    #[argh(option, default = "String::from(\"pass{n}\")")]
    password_template: String,
    /// salt seed (default starling-loadgen)
    #[argh(option, default = "String::from(\"starling-loadgen\")")]
    salt_seed: String,
    /// PBKDF2 iterations (default 4096)
    #[argh(option, default = "4096")]
    iterations: u32,
}

/// Serve the `limit` reference server (fixed replies, blind forwarding).
#[derive(FromArgs)]
#[argh(subcommand, name = "limit")]
struct Limit {
    /// listen address (only 127.0.0.0/8)
    #[argh(option, default = "\"127.0.0.1:5299\".parse().unwrap()")]
    listen: SocketAddr,
    /// the XMPP domain
    #[argh(option, default = "String::from(\"localhost\")")]
    domain: String,
}

/// Compare runs (result.json folders) of one profile; the first is the reference.
#[derive(FromArgs)]
#[argh(subcommand, name = "compare")]
struct Compare {
    /// where to write comparison.md
    #[argh(option)]
    out: PathBuf,
    /// run folders
    #[argh(positional)]
    runs: Vec<PathBuf>,
}

/// Internal: a worker process (started by `run`).
#[derive(FromArgs)]
#[argh(subcommand, name = "worker")]
struct Worker {}

fn loopback_only(address: &SocketAddr) -> Result<(), String> {
    match address.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => Ok(()),
        other => Err(format!("{other} is not in 127.0.0.0/8: this tool only targets loopback")),
    }
}

fn main() {
    let cli: Cli = argh::from_env();
    let outcome = match cli.command {
        Command::Worker(_) => {
            starling_loadgen::worker::main();
            Ok(())
        }
        Command::Run(run) => run_command(run),
        Command::Accounts(accounts) => {
            let iterations = std::num::NonZeroU32::new(accounts.iterations.max(1)).expect("nonzero");
            let started = std::time::Instant::now();
            let set = starling_loadgen::accounts::AccountSet {
                users: accounts.users,
                first: accounts.first_user,
                domain: &accounts.domain,
                user_template: &accounts.user_template,
                password_template: &accounts.password_template,
                seed: &accounts.salt_seed,
                iterations,
            };
            starling_loadgen::accounts::write_csv(&accounts.out, &set)
                .map(|()| {
                    eprintln!(
                        "{} accounts in {:.1} s -> {}",
                        accounts.users,
                        started.elapsed().as_secs_f64(),
                        accounts.out.display()
                    )
                })
                .map_err(|e| e.to_string())
        }
        Command::Limit(limit) => loopback_only(&limit.listen)
            .and_then(|()| starling_loadgen::limit::serve(limit.listen, limit.domain).map_err(|e| e.to_string())),
        Command::Compare(compare) => compare_command(compare),
    };
    if let Err(error) = outcome {
        eprintln!("starling-loadgen: {error}");
        std::process::exit(1);
    }
}

fn run_command(run: Run) -> Result<(), String> {
    let targets = if run.target.is_empty() { vec!["127.0.0.1:5222".parse().unwrap()] } else { run.target };
    for target in &targets {
        loopback_only(target)?;
    }
    if run.duration <= 0.0 || run.duration > 24.0 * 3600.0 {
        return Err("--duration must be between 0 and 86400 seconds".into());
    }
    let mut profile = Profile::new(run.profile, run.rate);
    if run.in_flight.is_some() {
        profile.in_flight = run.in_flight;
    }
    if let Some(rate) = run.message_rate {
        profile.message_rate = Some(rate);
    }
    if let Some(seconds) = run.session_seconds {
        profile.session_lifetime = Some(std::time::Duration::from_secs_f64(seconds));
    }
    profile.roster = run.roster;
    profile.roster_spread = run.roster_spread.max(1);
    let name = run.name.clone().unwrap_or_else(|| {
        serde_json::to_value(run.profile).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    });
    let out = run.out.clone().unwrap_or_else(|| PathBuf::from(format!("bench-results/{}-{name}", today())));
    let settings = RunSettings {
        targets,
        domain: run.domain,
        auth: run.auth,
        user_template: run.user_template,
        password_template: run.password_template,
        users: run.users,
        first_user: run.first_user,
        profile,
        duration: run.duration,
        body_bytes: run.body_bytes,
        salt_seed: run.salt_seed,
        iterations: run.iterations,
        legacy_session: run.legacy_session,
        tls: run.tls,
        login: run.login,
        sm: run.sm,
        websocket: match run.transport.as_str() {
            "tcp" => None,
            "websocket" => Some(run.ws_path.clone()),
            other => return Err(format!("unknown transport {other:?} (tcp, websocket)")),
        },
    };
    let options = RunOptions {
        settings,
        name,
        out: out.clone(),
        server_pid: run.server_pid,
        sessions_per_worker: run.sessions_per_worker,
        source_base: run.source_base,
        sources_per_worker: run.sources_per_worker.max(1),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let result = starling_loadgen::run::run(&options)?;
    let s = &result.summary;
    println!(
        "{}: peak {} sessions, {:.0} logins/s, {:.0} delivered/s, delivery p50 {:.2} ms p99 {:.2} ms, sent {} delivered {} bounced {} lost {}; report in {}",
        result.name,
        s.peak_sessions,
        s.login_rate,
        s.delivered_rate,
        result.delivery_latency_us.p50 as f64 / 1000.0,
        result.delivery_latency_us.p99 as f64 / 1000.0,
        s.sent,
        s.delivered,
        s.bounced,
        s.lost,
        out.display()
    );
    Ok(())
}

fn compare_command(compare: Compare) -> Result<(), String> {
    let results: Vec<RunResult> = compare
        .runs
        .iter()
        .map(|dir| {
            let text =
                std::fs::read_to_string(dir.join("result.json")).map_err(|e| format!("{}: {e}", dir.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", dir.display()))
        })
        .collect::<Result<_, String>>()?;
    std::fs::create_dir_all(&compare.out).map_err(|e| e.to_string())?;
    let text = starling_loadgen::report::compare(&results);
    std::fs::write(compare.out.join("comparison.md"), &text).map_err(|e| e.to_string())?;
    print!("{text}");
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD, without a date library.
fn today() -> String {
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0)
            as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
