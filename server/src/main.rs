//! `starling`: run a node (`starling serve`) or administer one
//! (`starling <category> <command> --arg value`).

use std::path::PathBuf;

use starling_server::cli::{self, Target};
use starling_server::config::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Options of `starling serve`.
#[derive(argh::FromArgs)]
/// Run a Starling node. Without --config it uses every default: SQLite in
/// ./starling-data, a generated certificate, c2s on 5222 (STARTTLS) and 5223 (TLS),
/// web clients on 5280 (ws://.../ws-xmpp, http://.../http-bind) and 5443 (wss, https),
/// the admin port on 127.0.0.1:5551.
struct Serve {
    /// the TOML configuration file (see starling.example.toml)
    #[argh(option)]
    config: Option<PathBuf>,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut config_path = std::env::var_os("STARLING_CONFIG").map(PathBuf::from);
    if args.first().map(String::as_str) == Some("--config") && args.len() >= 2 {
        config_path = Some(PathBuf::from(args[1].clone()));
        args.drain(..2);
    }
    if matches!(args.first().map(String::as_str), Some("--version" | "version")) {
        println!("starling {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if args.first().map(String::as_str) == Some("serve") {
        let strings: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let serve = match <Serve as argh::FromArgs>::from_args(&["starling serve"], &strings) {
            Ok(serve) => serve,
            Err(early) => {
                let ok = early.status.is_ok();
                if ok {
                    println!("{}", early.output);
                } else {
                    eprintln!("{}", early.output);
                }
                std::process::exit(if ok { 0 } else { cli::EXIT_USAGE });
            }
        };
        std::process::exit(serve_node(serve.config.or(config_path)));
    }
    let config = match load(config_path.as_ref()) {
        Ok(config) => config,
        Err(code) => std::process::exit(code),
    };
    let target = Target {
        address: config.admin.as_ref().map(|admin| admin.address),
        credentials: config.admin.as_ref().and_then(|admin| admin.credentials.clone()),
    };
    std::process::exit(cli::run(&args, &target));
}

fn load(path: Option<&PathBuf>) -> Result<Config, i32> {
    match path {
        None => Ok(Config::defaults()),
        Some(path) => Config::load(path).map_err(|error| {
            eprintln!("starling: configuration error: {error}");
            cli::EXIT_USAGE
        }),
    }
}

fn serve_node(path: Option<PathBuf>) -> i32 {
    let config = match load(path.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    env_logger::Builder::new()
        .filter_level(config.general.log_level)
        .parse_env("STARLING_LOG")
        .format_timestamp_millis()
        .init();
    starling_server::install_panic_hook();
    starling_server::raise_open_file_limit();
    let signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
    {
        Ok(signals) => signals,
        Err(error) => {
            log::error!("cannot install signal handlers: {error}");
            return 1;
        }
    };
    let running =
        starling_server::bind_listeners(&config).and_then(|listeners| starling_server::run(config, listeners));
    let running = match running {
        Ok(running) => running,
        Err(error) => {
            // Once, on stderr (it was logged and printed, twice over).
            eprintln!("starling: cannot start: {error}");
            return 1;
        }
    };
    let addresses: Vec<String> = running.c2s_addresses.iter().map(|a| a.to_string()).collect();
    let admin = running.admin_address.map_or_else(|| "off".to_owned(), |a| a.to_string());
    eprintln!(
        "starling: serving XMPP on {}, admin on {admin}; clients verify TLS with {}",
        addresses.join(", "),
        running.ca_file.display()
    );
    let mut signals = signals;
    if let Some(signal) = signals.forever().next() {
        log::warn!("signal {signal}: shutting down");
    }
    running.shutdown();
    0
}
