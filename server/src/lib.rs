//! starling-server: composes a Starling node from its parts.
//!
//! ```text
//!  main: CLI + config --> bind_listeners(config) --> run(config, listeners) --> Running
//!                                                      |  storage (SQLite) + DB thread pool
//!                                                      |  TLS material (generated on first start)
//!                                                      |  cores (starling-shard::Node)
//!                                                      |  admin port: accept thread + 4 workers (GraphQL)
//!  SIGTERM/SIGINT --> Running::shutdown()
//! ```
//! Tests start whole nodes in-process the same way, on port 0.

pub mod admin;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use starling_modules::Store;
use starling_shard::db::{DbPool, DbThreads, StoreFactory};
use starling_shard::settings::{Listener, ListenerTls, Settings};
use starling_shard::Node;
use starling_wire::c2s::{C2sSettings, TlsPolicy};

use crate::config::{Config, Database, TlsMode};
use crate::store::Storage;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("storage: {0}")]
    Storage(#[from] starling_shard::db::StoreError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cores: {0}")]
    Cores(#[from] starling_shard::StartError),
    #[error("admin: {0}")]
    Admin(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Bound listening sockets, made before `run` so callers (tests) can use port 0.
pub struct Listeners {
    /// Per c2s listener: its actual address and one socket per core.
    pub c2s: Vec<(SocketAddr, Vec<OwnedFd>)>,
    pub admin: Option<std::net::TcpListener>,
    /// `[listen.metrics]`: `/metrics` alone, without credentials.
    pub metrics: Option<std::net::TcpListener>,
    /// With clustering: the replication address and one socket per core.
    pub replication: Option<(SocketAddr, Vec<OwnedFd>)>,
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect()
    } else {
        cpus
    }
}

/// The CPUs the executors are pinned to: one per core, round-robin over the allowed set.
pub fn core_cpus(config: &Config) -> Vec<usize> {
    let allowed = allowed_cpus();
    let cores = config.general.cores.map(|n| n.get()).unwrap_or(allowed.len());
    (0..cores).map(|i| allowed[i % allowed.len()]).collect()
}

/// Binds every listener: each c2s address once per core (SO_REUSEPORT); a port of 0
/// is resolved by the first bind and reused by the others.
pub fn bind_listeners(config: &Config) -> Result<Listeners, RunError> {
    let cores = core_cpus(config).len();
    let bind_per_core = |mut address: SocketAddr| -> Result<(SocketAddr, Vec<OwnedFd>), RunError> {
        refuse_served_port(address)?;
        let mut sockets = Vec::with_capacity(cores);
        for _ in 0..cores {
            let socket = reuse_port_socket(address).map_err(|source| RunError::Bind { address, source })?;
            address = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(address);
            sockets.push(OwnedFd::from(std::net::TcpListener::from(socket)));
        }
        Ok((address, sockets))
    };
    let c2s = config.c2s.iter().map(|listener| bind_per_core(listener.address)).collect::<Result<Vec<_>, _>>()?;
    let replication = config.cluster.as_ref().map(|cluster| bind_per_core(cluster.listen)).transpose()?;
    let admin = match &config.admin {
        None => None,
        Some(admin) => Some(
            std::net::TcpListener::bind(admin.address)
                .map_err(|source| RunError::Bind { address: admin.address, source })?,
        ),
    };
    let metrics = match config.metrics {
        None => None,
        Some(address) => {
            Some(std::net::TcpListener::bind(address).map_err(|source| RunError::Bind { address, source })?)
        }
    };
    Ok(Listeners { c2s, admin, metrics, replication })
}

/// SO_REUSEPORT lets a second process bind a port this process serves, and the
/// kernel would hand it half of the clients. So before binding our per-core sockets,
/// a plain bind (SO_REUSEADDR only, so a port in TIME_WAIT is fine) must succeed:
/// with any listener on the port it fails with "address in use".
fn refuse_served_port(address: SocketAddr) -> Result<(), RunError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if address.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))
        .and_then(|socket| socket.set_reuse_address(true).map(|()| socket))
        .and_then(|socket| socket.bind(&address.into()));
    probe.map_err(|source| RunError::Bind { address, source })
}

fn reuse_port_socket(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket)
}

/// Logs panics through `log` with their thread and place. The message is cut short:
/// it is ours, but may quote a value. Contained panics (`starling_shard`'s contain.rs)
/// are logged again with what was being handled.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|m| m.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let message: String = message.chars().take(160).collect();
        log::error!("panic in thread {} at {location}: {message}", thread.name().unwrap_or("?"));
    }));
}

/// A running node.
pub struct Running {
    node: Arc<Node>,
    admin: Option<admin::AdminServer>,
    db_threads: Option<DbThreads>,
    discovery: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    pub node_name: String,
    pub c2s_addresses: Vec<SocketAddr>,
    pub admin_address: Option<SocketAddr>,
    pub ca_file: std::path::PathBuf,
}

impl Running {
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Closes every stream with `system-shutdown`, stops the cores, the admin port
    /// and the DB threads.
    pub fn shutdown(mut self) {
        if let Some((stop, thread)) = self.discovery.take() {
            drop(stop);
            let _ = thread.join();
        }
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        self.node.shutdown();
        drop(self.node);
        if let Some(threads) = self.db_threads.take() {
            threads.join();
        }
    }
}

/// Starts a node on bound `listeners`.
pub fn run(config: Config, listeners: Listeners) -> Result<Running, RunError> {
    let (factory, storage): (Arc<StoreFactory<dyn Store>>, Box<dyn Storage>) = match &config.database {
        Database::Sqlite { path, .. } => {
            let storage = store::sqlite::Sqlite::open(path)?;
            (Arc::new(store::sqlite::Sqlite::factory(path.clone())), Box::new(storage))
        }
        Database::Postgres { url, .. } => {
            let storage = store::postgres::Postgres::connect(url)?;
            (Arc::new(store::postgres::Postgres::factory(url.clone())), Box::new(storage))
        }
    };
    let mut storage = storage;
    let decoy_secret = storage.secret("decoy")?;
    let fast = match config.modules.fast_auth_token {
        Some((validity, rotate_before)) if config.modules.sasl2 => {
            Some(starling_wire::c2s::FastSettings { validity, rotate_before, secret: storage.secret("fast")? })
        }
        _ => None,
    };
    let workers = match &config.database {
        Database::Sqlite { workers, .. } | Database::Postgres { workers, .. } => workers.get(),
    };
    let (db, db_threads): (DbPool<dyn Store>, DbThreads) =
        DbPool::start(workers, starling_shard::limits::DB_QUEUE_MAX, factory);
    let stream_features = starling_modules::stream_features(&config.modules, db.clone());
    let bind2_inline =
        if config.modules.bind2 { starling_modules::inline_features(&config.modules, db.clone()) } else { Vec::new() };
    let needs_tls = config.c2s.iter().any(|l| l.tls != TlsMode::None);
    let tls = if needs_tls {
        Some(tls::load(
            config.auth.certfile.as_deref(),
            config.auth.keyfile.as_deref(),
            &config.general.data_dir,
            &config.general.hosts,
        )?)
    } else {
        None
    };
    let listeners_settings = config
        .c2s
        .iter()
        .map(|listener| Listener {
            c2s: Arc::new(c2s_settings(
                &config,
                listener.tls,
                decoy_secret.clone(),
                &stream_features,
                &bind2_inline,
                fast.clone(),
            )),
            tls: if listener.tls == TlsMode::Direct { ListenerTls::Direct } else { ListenerTls::StartTls },
            shaper: listener.shaper,
            http: listener.http.as_ref().map(|http| starling_wire::http::Routes {
                websocket: http.websockets.clone(),
                bosh: http.bosh.clone(),
                // A body carries a few stanzas at most (clients send what queued
                // while a request was out).
                bosh_body_bytes_max: config.limits.framer.stanza_bytes_max as usize * 2 + 16 * 1024,
                tls: listener.tls == TlsMode::Direct,
            }),
        })
        .collect();
    let cpus = core_cpus(&config);
    let cpus_count = cpus.len();
    let c2s_addresses: Vec<SocketAddr> = listeners.c2s.iter().map(|(address, _)| *address).collect();
    let mut per_core: Vec<Vec<OwnedFd>> = (0..cpus.len()).map(|_| Vec::new()).collect();
    for (_, sockets) in listeners.c2s {
        for (core, socket) in sockets.into_iter().enumerate() {
            per_core[core].push(socket);
        }
    }
    let (cluster, discovery_setup) = match (&config.cluster, &listeners.replication) {
        (Some(cluster), Some((bound, _))) => {
            let (settings, setup) = join_cluster(&config, cluster, *bound)?;
            (Some(settings), Some(setup))
        }
        _ => (None, None),
    };
    let settings = Settings {
        cluster,
        hosts: config.general.hosts.clone(),
        cpus,
        listeners: listeners_settings,
        framer: config.limits.framer,
        limits: starling_shard::limits::Limits {
            pre_auth_timeout: config.limits.pre_auth_timeout,
            connections_per_core_max: connections_per_core(&config, cpus_count),
            connections_per_address_max: config.limits.connections_per_address_max,
            fail2ban: config.fail2ban,
            account_stanza_shaper: config.limits.account_stanza_shaper,
            queued_bytes_per_connection_max: config.limits.queued_bytes_per_connection_max,
            send_timeout: config.limits.send_timeout,
            sessions_per_user_max: config.limits.sessions_per_user_max,
            registration_interval: config.registration.as_ref().map_or(std::time::Duration::ZERO, |r| r.interval),
        },
        tls_starttls: tls.as_ref().map(|t| t.starttls.clone()),
        tls_direct: tls.as_ref().map(|t| t.direct.clone()),
        tls_http: tls.as_ref().map(|t| t.http.clone()),
        stream_management: config.modules.stream_management,
        bosh: config.modules.bosh,
        tls_server_end_point: tls.as_ref().and_then(|t| t.server_end_point.clone()),
        modules: starling_modules::build(config.modules.clone(), db.clone()),
    };
    let replication = listeners.replication.map(|(_, sockets)| sockets).unwrap_or_default();
    let node = Arc::new(Node::start_clustered(settings, per_core, replication, Arc::new(db))?);
    let discovery = discovery_setup.map(|(discovery_settings, factory, first)| {
        node.update_discovery(first);
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = discovery::spawn(discovery_settings, factory, node.clone(), stopped);
        (stop, thread)
    });
    let admin_address = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    let admin = match listeners.admin {
        None => None,
        Some(listener) => {
            let metrics = listeners.metrics;
            Some(
                admin::AdminServer::start(listener, metrics, &config, storage, node.clone())
                    .map_err(RunError::Admin)?,
            )
        }
    };
    let ca_file = config.general.data_dir.join("ca.pem");
    log::info!("node {} up: c2s on {c2s_addresses:?}, admin on {admin_address:?}", config.general.node_name);
    Ok(Running {
        node,
        admin,
        db_threads: Some(db_threads),
        discovery,
        node_name: config.general.node_name.clone(),
        c2s_addresses,
        admin_address,
        ca_file,
    })
}

type DiscoverySetup = (
    discovery::DiscoverySettings,
    Arc<discovery::DiscoveryFactory>,
    Vec<starling_replicate::membership::DiscoveredNode>,
);

/// Runs the first discovery round (the node needs its number before its cores start)
/// and prepares the settings of the replication links.
fn join_cluster(
    config: &Config,
    cluster: &config::Cluster,
    bound: SocketAddr,
) -> Result<(starling_shard::cluster::ClusterSettings, DiscoverySetup), RunError> {
    let address = cluster.address.clone().unwrap_or_else(|| {
        let ip = if bound.ip().is_unspecified() { "127.0.0.1".parse().expect("loopback") } else { bound.ip() };
        SocketAddr::new(ip, bound.port()).to_string()
    });
    let settings = discovery::DiscoverySettings {
        cluster: cluster.cluster_name.clone(),
        node: config.general.node_name.clone(),
        address,
        interval: cluster.discovery_interval,
    };
    let factory: Arc<discovery::DiscoveryFactory> = match &config.database {
        Database::Sqlite { path, .. } => {
            let path = path.clone();
            Arc::new(move || Ok(Box::new(store::sqlite::Sqlite::open(&path)?) as Box<dyn discovery::Discovery>))
        }
        Database::Postgres { url, .. } => {
            let url = url.clone();
            Arc::new(move || Ok(Box::new(store::postgres::Postgres::connect(&url)?) as Box<dyn discovery::Discovery>))
        }
    };
    let first = discovery::first_round(&settings, &*factory, std::time::Duration::from_secs(60))?;
    let me = first
        .iter()
        .find(|n| n.name == settings.node)
        .ok_or_else(|| RunError::Unsupported("discovery did not return this node".into()))?;
    let link = starling_replicate::link::LinkSettings {
        cluster: cluster.cluster_name.clone(),
        node: settings.node.clone(),
        node_num: me.node_num,
        secret: cluster.secret.as_bytes().to_vec(),
    };
    log::info!(
        "cluster {}: this node is {} (node_num {}), replication at {}",
        link.cluster,
        link.node,
        link.node_num,
        settings.address
    );
    Ok((starling_shard::cluster::ClusterSettings { link }, (settings, factory, first)))
}

fn c2s_settings(
    config: &Config,
    mode: TlsMode,
    decoy_secret: Vec<u8>,
    stream_features: &str,
    bind2_inline: &[String],
    fast: Option<starling_wire::c2s::FastSettings>,
) -> C2sSettings {
    C2sSettings {
        hosts: config.general.hosts.clone(),
        tls: match mode {
            TlsMode::StartTlsRequired => TlsPolicy::Required,
            TlsMode::StartTls => TlsPolicy::Optional,
            TlsMode::Direct | TlsMode::None => TlsPolicy::Disabled,
        },
        mechanisms: config.auth.mechanisms.clone(),
        sasl_attempts_max: config.auth.sasl_attempts_max,
        stanza_bytes_max: config.limits.framer.stanza_bytes_max,
        scram_iterations: config.auth.scram_iterations,
        decoy_secret,
        bind_features_extra: stream_features.as_bytes().to_vec(),
        registration: config.registration.is_some(),
        resumption: config.modules.stream_management.is_some_and(|sm| !sm.resume_timeout.is_zero()),
        sasl2: config.modules.sasl2,
        bind2: config.modules.bind2,
        bind2_inline: bind2_inline.to_vec(),
        fast,
    }
}

/// The iteration count for new credentials.
pub fn scram_iterations(config: &Config) -> NonZeroU32 {
    config.auth.scram_iterations
}

/// Raises the soft open-file limit to the hard one, as servers do (Go's runtime does
/// it for every program): a shell's default soft limit of 1,024 would otherwise make a
/// node of 24 connections (found by a breaker). Never lowers it.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            log::info!("limits: open-file limit raised from {soft} to {}", limit.rlim_max);
        }
    }
}

/// The configured `connections_per_core_max`, lowered so that every core's share fits
/// the process's open-file limit (less a reserve for listeners, links, the database
/// and files): at the limit new connections are refused at once instead of failing
/// in `accept` (which left them waiting in the backlog and flooded the log). Below
/// 1,000 per core the operator is warned: the hard limit is what to raise.
fn connections_per_core(config: &Config, cores: usize) -> usize {
    let configured = config.limits.connections_per_core_max;
    match starling_shard::guard::connections_per_core_for_fd_limit(cores) {
        Some(fitting) if fitting < configured => {
            let message = format!(
                "limits: {fitting} connections per core ({cores} cores) fit the open-file limit; \
                 connections_per_core_max = {configured} lowered to it"
            );
            if fitting < 1000 {
                log::warn!("{message} (raise the hard limit: `ulimit -Hn`, LimitNOFILE= in systemd)");
            } else {
                log::info!("{message}");
            }
            fitting
        }
        _ => configured,
    }
}
