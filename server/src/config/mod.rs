//! The TOML configuration, shaped like `mongooseim.toml`, parsed once into an
//! immutable typed [`Config`] (parse, don't validate).
//!
//! Every key has a default written out here and in `starling.example.toml`; an unknown
//! key or a bad value is a startup error that names the key.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use starling_shard::guard::Shaper;
use starling_wire::jid;
use starling_wire::limits::FramerLimits;
use starling_wire::sasl::Mechanism;

mod modules;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid value for `{key}`: {reason}")]
    Value { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value { key: key.to_owned(), reason: reason.into() }
}

/// The node's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub general: General,
    /// Client listeners: `[[listen.c2s]]` first, then `[[listen.http]]` (those have
    /// `http` set), in file order.
    pub c2s: Vec<C2sListener>,
    pub admin: Option<AdminListener>,
    /// `[listen.metrics]`: a port serving only `/metrics`, without credentials (for
    /// Prometheus when the admin port has credentials). None by default.
    pub metrics: Option<SocketAddr>,
    pub auth: Auth,
    pub database: Database,
    pub limits: Limits,
    /// Clustering (`[internal_databases.cets]`), when configured.
    pub cluster: Option<Cluster>,
    /// XEP-0077 in-band registration (`[modules.mod_register]`), when enabled.
    pub registration: Option<Registration>,
    /// The authentication throttle (`[modules.mod_fail2ban]`), when enabled.
    pub fail2ban: Option<starling_shard::guard::Fail2Ban>,
    /// The feature modules that run (`[modules]`) and their options.
    pub modules: starling_modules::Config,
}

/// In-band registration settings.
#[derive(Clone, Debug)]
pub struct Registration {
    /// One registration per client IP address per this long; zero: no limit.
    pub interval: Duration,
}

/// Clustering: discovery through the database, links between nodes.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub cluster_name: String,
    /// HMAC key every node of the cluster shares.
    pub secret: String,
    /// Where this node accepts other nodes' links.
    pub listen: SocketAddr,
    /// What other nodes connect to (written to `discovery_nodes.address`); `None`
    /// means the listen address, with 127.0.0.1 for an unspecified IP.
    pub address: Option<String>,
    /// Discovery rounds once the cluster has formed run every `discovery_interval`
    /// to twice that (jittered so nodes spread their queries).
    pub discovery_interval: std::time::Duration,
}

#[derive(Clone, Debug)]
pub struct General {
    /// This node's name in the cluster and in admin answers.
    pub node_name: String,
    /// Normalised XMPP domains served.
    pub hosts: Vec<String>,
    /// Executors (one per core); `None` means one per available CPU.
    pub cores: Option<NonZeroUsize>,
    /// Where the SQLite file, the generated certificate and secrets live.
    pub data_dir: PathBuf,
    pub log_level: log::LevelFilter,
}

/// How a c2s listener does TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS offered and required before authentication (default).
    StartTlsRequired,
    /// STARTTLS offered, not required.
    StartTls,
    /// TLS from the first byte (XEP-0368 direct TLS).
    Direct,
    /// Plain TCP only; must be chosen explicitly.
    None,
}

#[derive(Clone, Debug)]
pub struct C2sListener {
    pub address: SocketAddr,
    pub tls: TlsMode,
    /// Bytes per second each bound session may send (`shaper`, naming a
    /// `[shaper.*]`); `None` for `"none"`.
    pub shaper: Option<Shaper>,
    /// `Some` for a `[[listen.http]]` listener: clients speak HTTP first (RFC 7395
    /// WebSocket, XEP-0156 host-meta); `None` for `[[listen.c2s]]`.
    pub http: Option<HttpHandlers>,
}

/// What a `[[listen.http]]` listener serves (MongooseIM's `listen.http.handlers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpHandlers {
    /// `[[listen.http.handlers.mod_websockets]] path`: RFC 7395 XMPP over WebSocket.
    pub websockets: Option<String>,
    /// `[[listen.http.handlers.mod_bosh]] path`: XEP-0124/XEP-0206 BOSH.
    pub bosh: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AdminListener {
    pub address: SocketAddr,
    /// HTTP Basic credentials; `None` means no authentication (loopback only).
    pub credentials: Option<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Auth {
    pub mechanisms: Vec<Mechanism>,
    pub scram_iterations: NonZeroU32,
    pub sasl_attempts_max: u8,
    /// PEM files; `None` means generate a self-signed certificate in `data_dir`.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub enum Database {
    Sqlite { path: PathBuf, workers: NonZeroUsize },
    Postgres { url: String, workers: NonZeroUsize },
}

/// Resource limits (see each default's reason in `starling.example.toml`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub framer: FramerLimits,
    pub pre_auth_timeout: Duration,
    pub connections_per_core_max: usize,
    pub queued_bytes_per_connection_max: usize,
    pub send_timeout: Duration,
    pub sessions_per_user_max: usize,
    /// Open connections per source address (0: no limit).
    pub connections_per_address_max: u32,
    /// Stanzas per second per account (`account_stanza_shaper`); `None`: unshaped.
    pub account_stanza_shaper: Option<Shaper>,
}

impl Config {
    /// Reads and converts the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text)
    }

    /// Converts TOML text; relative paths are resolved against the working directory.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config = toml::from_str(text)?;
        raw.convert()
    }

    /// The configuration used when no file is given: every default.
    pub fn defaults() -> Config {
        // Invariant: the empty document is valid, every key having a default.
        Config::parse("").expect("defaults are valid")
    }

    /// A config for in-process tests: temporary data dir, ephemeral ports, plain
    /// TCP, few iterations, small limits so limit paths run.
    pub fn for_tests(data_dir: &Path) -> Config {
        let mut config = Config::defaults();
        config.general.data_dir = data_dir.to_owned();
        config.general.cores = NonZeroUsize::new(2);
        config.c2s = vec![C2sListener {
            address: "127.0.0.1:0".parse().expect("address"),
            tls: TlsMode::None,
            shaper: None,
            http: None,
        }];
        config.admin = Some(AdminListener { address: "127.0.0.1:0".parse().expect("address"), credentials: None });
        config.auth.scram_iterations = NonZeroU32::new(64).expect("nonzero");
        config.database =
            Database::Sqlite { path: data_dir.join("starling.db"), workers: NonZeroUsize::new(2).expect("nonzero") };
        config.limits.framer = FramerLimits::for_tests();
        config.limits.pre_auth_timeout = Duration::from_secs(2);
        config.limits.queued_bytes_per_connection_max = 64 * 1024;
        config.limits.send_timeout = Duration::from_secs(3);
        // Tests that flood on purpose turn the shapers on themselves.
        config.limits.account_stanza_shaper = None;
        config.cluster = None;
        config
    }
}

mod raw {
    //! The file's shape, with serde defaults. Converted once into `Config`.
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        general: General,
        #[serde(default)]
        listen: Listen,
        #[serde(default)]
        auth: Auth,
        #[serde(default)]
        outgoing_pools: OutgoingPools,
        #[serde(default)]
        limits: Limits,
        #[serde(default)]
        internal_databases: InternalDatabases,
        #[serde(default)]
        modules: Option<super::modules::Modules>,
        /// Named shapers (MongooseIM's `[shaper.NAME] max_rate`, ejabberd's
        /// `burst_size`); `normal`, `fast` and `stanzas` exist unless redefined.
        #[serde(default)]
        shaper: std::collections::BTreeMap<String, RawShaper>,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(deny_unknown_fields)]
    pub struct RawShaper {
        /// Units (bytes, or stanzas) per second.
        max_rate: u32,
        /// Units that may pass at once; default one second's worth.
        #[serde(default)]
        burst_size: Option<u32>,
    }

    /// The shapers a config without `[shaper]` tables has. `normal` (every c2s
    /// listener's default): 10 kB/s sustained, a 100 kB burst (a full 64 KiB stanza
    /// passes at once). `fast`: 50 kB/s (MongooseIM's `fast`). `stanzas` (the
    /// default `account_stanza_shaper`): 50 stanzas/s, bursts of 500.
    fn builtin_shapers() -> [(&'static str, Shaper); 3] {
        [
            ("normal", Shaper { max_rate: 10_000, burst_size: 100_000 }),
            ("fast", Shaper { max_rate: 50_000, burst_size: 500_000 }),
            ("stanzas", Shaper { max_rate: 50, burst_size: 500 }),
        ]
    }

    /// Resolves a shaper name: `"none"` is no shaper.
    fn shaper(
        shapers: &std::collections::BTreeMap<String, RawShaper>,
        key: &str,
        name: &str,
    ) -> Result<Option<Shaper>, ConfigError> {
        if name == "none" {
            return Ok(None);
        }
        if let Some(raw) = shapers.get(name) {
            if raw.max_rate == 0 {
                return Err(invalid(
                    &format!("shaper.{name}.max_rate"),
                    "must be positive (use \"none\" for no shaper)",
                ));
            }
            let burst_size = raw.burst_size.unwrap_or(raw.max_rate);
            return Ok(Some(Shaper { max_rate: raw.max_rate, burst_size }));
        }
        builtin_shapers()
            .into_iter()
            .find(|(builtin, _)| *builtin == name)
            .map(|(_, shaper)| Some(shaper))
            .ok_or_else(|| invalid(key, format!("no shaper named {name:?} (define [shaper.{name}] or use \"none\")")))
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct InternalDatabases {
        #[serde(default)]
        cets: Option<Cets>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cets {
        #[serde(default = "default_backend")]
        backend: String,
        #[serde(default = "default_cluster_name")]
        cluster_name: String,
        secret: Option<String>,
        #[serde(default = "default_cets_listen")]
        listen: String,
        #[serde(default)]
        address: Option<String>,
        #[serde(default = "default_discovery_interval")]
        discovery_interval: u64,
    }

    fn default_backend() -> String {
        "rdbms".to_owned()
    }
    fn default_cluster_name() -> String {
        "starling".to_owned()
    }
    fn default_discovery_interval() -> u64 {
        30
    }
    fn default_cets_listen() -> String {
        "0.0.0.0:5270".to_owned()
    }

    impl Cets {
        fn convert(self) -> Result<super::Cluster, ConfigError> {
            if self.backend != "rdbms" {
                return Err(invalid(
                    "internal_databases.cets.backend",
                    "only \"rdbms\" (discovery through the database)",
                ));
            }
            let secret = self.secret.filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid("internal_databases.cets.secret", "a shared secret is required for clustering")
            })?;
            let name_ok = |n: &str| !n.is_empty() && n.len() <= 250 && n.bytes().all(|b| b.is_ascii_graphic());
            if !name_ok(&self.cluster_name) {
                return Err(invalid("internal_databases.cets.cluster_name", "printable ASCII, at most 250 bytes"));
            }
            let listen = self
                .listen
                .parse()
                .map_err(|_| invalid("internal_databases.cets.listen", format!("{:?} is not ip:port", self.listen)))?;
            if !(1..=3600).contains(&self.discovery_interval) {
                return Err(invalid("internal_databases.cets.discovery_interval", "seconds, 1 to 3600"));
            }
            Ok(super::Cluster {
                cluster_name: self.cluster_name,
                secret,
                listen,
                address: self.address,
                discovery_interval: std::time::Duration::from_secs(self.discovery_interval),
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct General {
        #[serde(default = "default_node_name")]
        node_name: String,
        #[serde(default = "default_hosts")]
        hosts: Vec<String>,
        #[serde(default)]
        cores: usize,
        #[serde(default = "default_data_dir")]
        data_dir: PathBuf,
        #[serde(default = "default_loglevel")]
        loglevel: String,
    }

    impl Default for General {
        fn default() -> Self {
            General {
                node_name: default_node_name(),
                hosts: default_hosts(),
                cores: 0,
                data_dir: default_data_dir(),
                loglevel: default_loglevel(),
            }
        }
    }

    fn default_node_name() -> String {
        "starling@localhost".to_owned()
    }
    fn default_hosts() -> Vec<String> {
        vec!["localhost".to_owned()]
    }
    fn default_data_dir() -> PathBuf {
        PathBuf::from("starling-data")
    }
    fn default_loglevel() -> String {
        "warning".to_owned()
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Listen {
        /// `None`: the default listeners (5222, 5223).
        #[serde(default)]
        c2s: Option<Vec<C2s>>,
        /// `None`: the default HTTP listeners (5280, 5443) when `c2s` is also
        /// the default, none otherwise (a config naming its listeners gets only those).
        #[serde(default)]
        http: Option<Vec<Http>>,
        #[serde(default = "default_admin")]
        admin: Option<Admin>,
        #[serde(default)]
        metrics: Option<Metrics>,
    }

    impl Default for Listen {
        fn default() -> Self {
            Listen { c2s: None, http: None, admin: default_admin(), metrics: None }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Metrics {
        #[serde(default = "default_admin_ip")]
        ip_address: String,
        port: u16,
    }

    fn default_admin() -> Option<Admin> {
        Some(Admin {
            enabled: true,
            ip_address: default_admin_ip(),
            port: default_admin_port(),
            username: None,
            password: None,
        })
    }

    fn default_c2s() -> Vec<C2s> {
        vec![
            C2s {
                port: 5222,
                ip_address: default_ip(),
                tls: Tls { mode: "starttls_required".to_owned() },
                shaper: default_c2s_shaper(),
            },
            C2s {
                port: 5223,
                ip_address: default_ip(),
                tls: Tls { mode: "tls".to_owned() },
                shaper: default_c2s_shaper(),
            },
        ]
    }

    fn default_http() -> Vec<Http> {
        let websockets = default_handlers;
        vec![
            Http {
                port: 5280,
                ip_address: default_ip(),
                tls: Tls { mode: "none".to_owned() },
                shaper: default_c2s_shaper(),
                handlers: websockets(),
            },
            Http {
                port: 5443,
                ip_address: default_ip(),
                tls: Tls { mode: "tls".to_owned() },
                shaper: default_c2s_shaper(),
                handlers: websockets(),
            },
        ]
    }

    /// `[[listen.http]]`: MongooseIM's HTTP listener for web clients.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Http {
        port: u16,
        #[serde(default = "default_ip")]
        ip_address: String,
        /// `none` (plain HTTP, `ws://`) or `tls` (HTTPS, `wss://`).
        #[serde(default = "default_http_tls")]
        tls: Tls,
        #[serde(default = "default_c2s_shaper")]
        shaper: String,
        /// No `handlers` table: `mod_websockets` at `/ws-xmpp` and `mod_bosh` at
        /// `/http-bind` (a listener that served nothing would be a surprise); a table
        /// lists exactly what is served.
        #[serde(default = "default_handlers")]
        handlers: Handlers,
    }

    fn default_handlers() -> Handlers {
        Handlers {
            mod_websockets: vec![Handler { host: default_any_host(), path: None }],
            mod_bosh: vec![Handler { host: default_any_host(), path: None }],
        }
    }

    fn default_http_tls() -> Tls {
        Tls { mode: "none".to_owned() }
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Handlers {
        #[serde(default)]
        mod_websockets: Vec<Handler>,
        #[serde(default)]
        mod_bosh: Vec<Handler>,
    }

    /// One `[[listen.http.handlers.mod_*]]` entry.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Handler {
        /// MongooseIM's `host`; only `"_"` (any) is served.
        #[serde(default = "default_any_host")]
        host: String,
        /// `None`: the handler's default (`/ws-xmpp`, `/http-bind`).
        path: Option<String>,
    }

    fn default_any_host() -> String {
        "_".to_owned()
    }

    /// A handler list's one path, checked; `name` is `mod_websockets` or `mod_bosh`.
    fn handler_path(key: &str, name: &str, handlers: &[Handler], default: &str) -> Result<Option<String>, ConfigError> {
        match handlers {
            [] => Ok(None),
            [one] => {
                if one.host != "_" {
                    return Err(invalid(
                        &format!("{key}.handlers.{name}.host"),
                        "only \"_\" (every host) is supported",
                    ));
                }
                let path = one.path.clone().unwrap_or_else(|| default.to_owned());
                if !path.starts_with('/') {
                    return Err(invalid(&format!("{key}.handlers.{name}.path"), "must start with /"));
                }
                Ok(Some(path))
            }
            _ => Err(invalid(&format!("{key}.handlers.{name}"), "give one at most")),
        }
    }

    impl Http {
        fn convert(
            self,
            index: usize,
            shapers: &std::collections::BTreeMap<String, RawShaper>,
        ) -> Result<super::C2sListener, ConfigError> {
            let key = format!("listen.http[{index}]");
            let shaper = shaper(shapers, &format!("{key}.shaper"), &self.shaper)?;
            let tls = match self.tls.mode.as_str() {
                "tls" => TlsMode::Direct,
                "none" => TlsMode::None,
                other => {
                    return Err(invalid(&format!("{key}.tls.mode"), format!("{other:?} is not \"none\" or \"tls\"")))
                }
            };
            let websockets = handler_path(&key, "mod_websockets", &self.handlers.mod_websockets, "/ws-xmpp")?;
            let bosh = handler_path(&key, "mod_bosh", &self.handlers.mod_bosh, "/http-bind")?;
            if websockets.is_some() && websockets == bosh {
                return Err(invalid(&format!("{key}.handlers.mod_bosh.path"), "is mod_websockets' path too"));
            }
            Ok(super::C2sListener {
                address: socket_address(&format!("{key}.ip_address"), &self.ip_address, self.port)?,
                tls,
                shaper,
                http: Some(super::HttpHandlers { websockets, bosh }),
            })
        }
    }

    fn default_ip() -> String {
        "0.0.0.0".to_owned()
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C2s {
        port: u16,
        #[serde(default = "default_ip")]
        ip_address: String,
        #[serde(default)]
        tls: Tls,
        #[serde(default = "default_c2s_shaper")]
        shaper: String,
    }

    fn default_c2s_shaper() -> String {
        "normal".to_owned()
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tls {
        #[serde(default = "default_tls_mode")]
        mode: String,
    }

    impl Default for Tls {
        fn default() -> Self {
            Tls { mode: default_tls_mode() }
        }
    }

    fn default_tls_mode() -> String {
        "starttls_required".to_owned()
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Admin {
        #[serde(default = "default_true")]
        enabled: bool,
        #[serde(default = "default_admin_ip")]
        ip_address: String,
        #[serde(default = "default_admin_port")]
        port: u16,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }

    fn default_true() -> bool {
        true
    }

    fn default_admin_ip() -> String {
        "127.0.0.1".to_owned()
    }
    fn default_admin_port() -> u16 {
        5551
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Auth {
        #[serde(default = "default_mechanisms")]
        sasl_mechanisms: Vec<String>,
        #[serde(default)]
        password: Password,
        #[serde(default = "default_sasl_attempts")]
        sasl_attempts_max: u8,
        #[serde(default)]
        certfile: Option<PathBuf>,
        #[serde(default)]
        keyfile: Option<PathBuf>,
    }

    impl Default for Auth {
        fn default() -> Self {
            Auth {
                sasl_mechanisms: default_mechanisms(),
                password: Password::default(),
                sasl_attempts_max: default_sasl_attempts(),
                certfile: None,
                keyfile: None,
            }
        }
    }

    fn default_mechanisms() -> Vec<String> {
        ["scram_sha256_plus", "scram_sha1_plus", "scram_sha256", "scram_sha1", "plain"].map(String::from).to_vec()
    }
    fn default_sasl_attempts() -> u8 {
        3
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Password {
        #[serde(default = "default_iterations")]
        scram_iterations: u32,
    }

    impl Default for Password {
        fn default() -> Self {
            Password { scram_iterations: default_iterations() }
        }
    }

    fn default_iterations() -> u32 {
        10_000
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct OutgoingPools {
        #[serde(default)]
        rdbms: Option<Rdbms>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rdbms {
        default: Pool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        #[serde(default = "default_workers")]
        workers: usize,
        connection: Connection,
    }

    fn default_workers() -> usize {
        4
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Connection {
        driver: String,
        #[serde(default)]
        database: Option<String>,
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default = "default_stanza_bytes")]
        stanza_bytes_max: u32,
        #[serde(default = "default_depth")]
        depth_max: u16,
        #[serde(default = "default_attributes")]
        attributes_per_element_max: u16,
        #[serde(default = "default_name_bytes")]
        name_bytes_max: u16,
        #[serde(default = "default_pre_auth_timeout")]
        pre_auth_timeout_seconds: u64,
        #[serde(default = "default_connections_per_core")]
        connections_per_core_max: usize,
        #[serde(default = "default_queued_bytes")]
        queued_bytes_per_connection_max: usize,
        #[serde(default = "default_send_timeout")]
        send_timeout_seconds: u64,
        #[serde(default = "default_sessions_per_user")]
        sessions_per_user_max: usize,
        #[serde(default = "default_connections_per_address")]
        connections_per_address_max: u32,
        #[serde(default = "default_account_stanza_shaper")]
        account_stanza_shaper: String,
    }

    fn default_connections_per_address() -> u32 {
        1000
    }
    fn default_account_stanza_shaper() -> String {
        "stanzas".to_owned()
    }

    impl Default for Limits {
        fn default() -> Self {
            // Invariant: an empty table takes every serde default.
            toml::from_str("").expect("limit defaults")
        }
    }

    fn default_stanza_bytes() -> u32 {
        FramerLimits::DEFAULT.stanza_bytes_max
    }
    fn default_depth() -> u16 {
        FramerLimits::DEFAULT.depth_max
    }
    fn default_attributes() -> u16 {
        FramerLimits::DEFAULT.attributes_per_element_max
    }
    fn default_name_bytes() -> u16 {
        FramerLimits::DEFAULT.name_bytes_max
    }
    fn default_pre_auth_timeout() -> u64 {
        10
    }
    fn default_connections_per_core() -> usize {
        1_000_000
    }
    fn default_queued_bytes() -> usize {
        1024 * 1024
    }
    fn default_send_timeout() -> u64 {
        15
    }
    fn default_sessions_per_user() -> usize {
        64
    }

    impl Config {
        pub fn convert(self) -> Result<super::Config, ConfigError> {
            let (modules, registration, fail2ban) = super::modules::convert(self.modules)?;
            let shapers = self.shaper;
            let data_dir = self.general.data_dir;
            Ok(super::Config {
                general: super::General {
                    node_name: node_name(self.general.node_name)?,
                    hosts: hosts(self.general.hosts)?,
                    cores: NonZeroUsize::new(self.general.cores),
                    log_level: log_level(&self.general.loglevel)?,
                    data_dir: data_dir.clone(),
                },
                c2s: {
                    // A file that names any client listener gets exactly those (found
                    // by a newcomer: a web-only file also opened 5222 and 5223).
                    let (c2s, http) = match (self.listen.c2s, self.listen.http) {
                        (None, None) => (default_c2s(), default_http()),
                        (c2s, http) => (c2s.unwrap_or_default(), http.unwrap_or_default()),
                    };
                    let c2s = c2s.into_iter().enumerate();
                    let c2s = c2s.map(|(i, c2s)| c2s.convert(i, &shapers));
                    let http = http.into_iter().enumerate().map(|(i, http)| http.convert(i, &shapers));
                    c2s.chain(http).collect::<Result<_, _>>()?
                },
                admin: self.listen.admin.filter(|admin| admin.enabled).map(Admin::convert).transpose()?,
                metrics: self
                    .listen
                    .metrics
                    .map(|m| socket_address("listen.metrics.ip_address", &m.ip_address, m.port))
                    .transpose()?,
                auth: self.auth.convert()?,
                database: database(self.outgoing_pools.rdbms, &data_dir)?,
                limits: self.limits.convert(&shapers)?,
                cluster: self.internal_databases.cets.map(Cets::convert).transpose()?,
                registration,
                fail2ban,
                modules,
            })
        }
    }

    fn node_name(name: String) -> Result<String, ConfigError> {
        let valid = !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(name)
        } else {
            Err(invalid("general.node_name", "printable ASCII without spaces, at most 255 bytes"))
        }
    }

    fn hosts(hosts: Vec<String>) -> Result<Vec<String>, ConfigError> {
        if hosts.is_empty() {
            return Err(invalid("general.hosts", "at least one domain is needed"));
        }
        hosts
            .iter()
            .map(|host| {
                jid::normalise_domain(host)
                    .map(|d| d.into_owned())
                    .map_err(|e| invalid("general.hosts", format!("{host:?}: {e}")))
            })
            .collect()
    }

    fn log_level(level: &str) -> Result<log::LevelFilter, ConfigError> {
        Ok(match level {
            "none" => log::LevelFilter::Off,
            "emergency" | "alert" | "critical" | "error" => log::LevelFilter::Error,
            "warning" => log::LevelFilter::Warn,
            "notice" | "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "all" => log::LevelFilter::Trace,
            other => return Err(invalid("general.loglevel", format!("unknown level {other:?}"))),
        })
    }

    fn socket_address(key: &str, ip: &str, port: u16) -> Result<SocketAddr, ConfigError> {
        let ip: std::net::IpAddr = ip.parse().map_err(|_| invalid(key, format!("{ip:?} is not an IP address")))?;
        Ok(SocketAddr::new(ip, port))
    }

    impl C2s {
        fn convert(
            self,
            index: usize,
            shapers: &std::collections::BTreeMap<String, RawShaper>,
        ) -> Result<super::C2sListener, ConfigError> {
            let key = format!("listen.c2s[{index}]");
            let shaper = shaper(shapers, &format!("{key}.shaper"), &self.shaper)?;
            let tls = match self.tls.mode.as_str() {
                "starttls_required" => TlsMode::StartTlsRequired,
                "starttls" => TlsMode::StartTls,
                "tls" => TlsMode::Direct,
                "none" => TlsMode::None,
                other => return Err(invalid(&format!("{key}.tls.mode"), format!("unknown mode {other:?}"))),
            };
            Ok(super::C2sListener {
                address: socket_address(&format!("{key}.ip_address"), &self.ip_address, self.port)?,
                tls,
                shaper,
                http: None,
            })
        }
    }

    impl Admin {
        fn convert(self) -> Result<super::AdminListener, ConfigError> {
            let credentials = match (self.username, self.password) {
                (Some(username), Some(password)) => Some((username, password)),
                (None, None) => None,
                _ => return Err(invalid("listen.admin", "set both username and password, or neither")),
            };
            Ok(super::AdminListener {
                address: socket_address("listen.admin.ip_address", &self.ip_address, self.port)?,
                credentials,
            })
        }
    }

    impl Auth {
        fn convert(self) -> Result<super::Auth, ConfigError> {
            let mechanisms = self
                .sasl_mechanisms
                .iter()
                .map(|name| match name.as_str() {
                    "plain" => Ok(Mechanism::Plain),
                    "scram_sha1" => Ok(Mechanism::ScramSha1),
                    "scram_sha1_plus" => Ok(Mechanism::ScramSha1Plus),
                    "scram_sha256" => Ok(Mechanism::ScramSha256),
                    "scram_sha256_plus" => Ok(Mechanism::ScramSha256Plus),
                    other => Err(invalid("auth.sasl_mechanisms", format!("unknown mechanism {other:?}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if mechanisms.is_empty() {
                return Err(invalid("auth.sasl_mechanisms", "at least one mechanism is needed"));
            }
            let scram_iterations = NonZeroU32::new(self.password.scram_iterations)
                .ok_or_else(|| invalid("auth.password.scram_iterations", "must be at least 1"))?;
            if !(1..=10).contains(&self.sasl_attempts_max) {
                return Err(invalid("auth.sasl_attempts_max", "must be between 1 and 10"));
            }
            if self.certfile.is_some() != self.keyfile.is_some() {
                return Err(invalid("auth.certfile", "set both certfile and keyfile, or neither"));
            }
            Ok(super::Auth {
                mechanisms,
                scram_iterations,
                sasl_attempts_max: self.sasl_attempts_max,
                certfile: self.certfile,
                keyfile: self.keyfile,
            })
        }
    }

    fn database(rdbms: Option<Rdbms>, data_dir: &Path) -> Result<super::Database, ConfigError> {
        let Some(rdbms) = rdbms else {
            return Ok(super::Database::Sqlite {
                path: data_dir.join("starling.db"),
                workers: NonZeroUsize::new(default_workers()).expect("nonzero"),
            });
        };
        let workers = NonZeroUsize::new(rdbms.default.workers)
            .ok_or_else(|| invalid("outgoing_pools.rdbms.default.workers", "must be at least 1"))?;
        let connection = rdbms.default.connection;
        match connection.driver.as_str() {
            "sqlite" => {
                let file = connection.database.unwrap_or_else(|| "starling.db".to_owned());
                Ok(super::Database::Sqlite { path: data_dir.join(file), workers })
            }
            "pgsql" => {
                let url = format!(
                    "host={} port={} dbname={} user={}{}",
                    connection.host.unwrap_or_else(|| "127.0.0.1".to_owned()),
                    connection.port.unwrap_or(5432),
                    connection.database.unwrap_or_else(|| "starling".to_owned()),
                    connection.username.unwrap_or_else(|| "postgres".to_owned()),
                    connection.password.map(|p| format!(" password={p}")).unwrap_or_default(),
                );
                Ok(super::Database::Postgres { url, workers })
            }
            other => Err(invalid(
                "outgoing_pools.rdbms.default.connection.driver",
                format!("unknown driver {other:?} (sqlite or pgsql)"),
            )),
        }
    }

    impl Limits {
        fn convert(
            self,
            shapers: &std::collections::BTreeMap<String, RawShaper>,
        ) -> Result<super::Limits, ConfigError> {
            let account_stanza_shaper = shaper(shapers, "limits.account_stanza_shaper", &self.account_stanza_shaper)?;
            if self.stanza_bytes_max < 10_000 || self.stanza_bytes_max > 16 * 1024 * 1024 {
                // RFC 6120 section 13.12: at least 10,000 bytes.
                return Err(invalid("limits.stanza_bytes_max", "must be between 10000 and 16777216"));
            }
            if self.depth_max == 0 || self.attributes_per_element_max == 0 || self.name_bytes_max < 16 {
                return Err(invalid(
                    "limits",
                    "depth_max and attributes_per_element_max must be positive, name_bytes_max at least 16",
                ));
            }
            if self.depth_max > 256 {
                // Stanzas are parsed by roxmltree, which recurses per level: a core
                // thread's stack must hold the deepest stanza accepted.
                return Err(invalid("limits.depth_max", "must be at most 256"));
            }
            if self.send_timeout_seconds == 0 {
                return Err(invalid("limits.send_timeout_seconds", "must be positive"));
            }
            if self.pre_auth_timeout_seconds == 0 {
                return Err(invalid("limits.pre_auth_timeout_seconds", "must be positive"));
            }
            if self.queued_bytes_per_connection_max < self.stanza_bytes_max as usize {
                return Err(invalid("limits.queued_bytes_per_connection_max", "must be at least stanza_bytes_max"));
            }
            if self.connections_per_core_max == 0 || self.sessions_per_user_max == 0 {
                return Err(invalid("limits", "connections_per_core_max and sessions_per_user_max must be positive"));
            }
            Ok(super::Limits {
                framer: FramerLimits {
                    stanza_bytes_max: self.stanza_bytes_max,
                    depth_max: self.depth_max,
                    attributes_per_element_max: self.attributes_per_element_max,
                    name_bytes_max: self.name_bytes_max,
                },
                pre_auth_timeout: Duration::from_secs(self.pre_auth_timeout_seconds),
                connections_per_core_max: self.connections_per_core_max,
                queued_bytes_per_connection_max: self.queued_bytes_per_connection_max,
                send_timeout: Duration::from_secs(self.send_timeout_seconds),
                sessions_per_user_max: self.sessions_per_user_max,
                connections_per_address_max: self.connections_per_address_max,
                account_stanza_shaper,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no file at all, the node runs on its documented defaults.
    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::defaults();
        assert_eq!(config.general.hosts, vec!["localhost"]);
        assert_eq!(config.c2s.len(), 4);
        assert_eq!(config.c2s[0].address.port(), 5222);
        assert_eq!(config.c2s[0].tls, TlsMode::StartTlsRequired);
        assert_eq!(config.c2s[1].tls, TlsMode::Direct);
        let ws = Some(HttpHandlers { websockets: Some("/ws-xmpp".into()), bosh: Some("/http-bind".into()) });
        assert_eq!((config.c2s[2].address.port(), config.c2s[2].tls, &config.c2s[2].http), (5280, TlsMode::None, &ws));
        assert_eq!(
            (config.c2s[3].address.port(), config.c2s[3].tls, &config.c2s[3].http),
            (5443, TlsMode::Direct, &ws)
        );
        assert_eq!(config.admin.unwrap().address, "127.0.0.1:5551".parse().unwrap());
        assert_eq!(config.auth.scram_iterations.get(), 10_000);
        assert!(matches!(config.database, Database::Sqlite { .. }));
    }

    /// A file naming its c2s listeners gets no HTTP listener it did not name; named
    /// ones parse with MongooseIM's keys, and bad values name their key.
    #[test]
    fn http_listeners() {
        let named = Config::parse("[[listen.c2s]]\nport = 5222").expect("valid");
        assert!(named.c2s.iter().all(|l| l.http.is_none()));
        // Regression: a file naming only HTTP listeners got the default c2s ports too.
        let web_only = Config::parse("[[listen.http]]\nport = 15280").expect("valid");
        assert_eq!(web_only.c2s.len(), 1, "only the named HTTP listener");
        let bare = Config::parse("[[listen.http]]\nport = 15280").expect("valid");
        let ws = Some(HttpHandlers { websockets: Some("/ws-xmpp".into()), bosh: Some("/http-bind".into()) });
        assert_eq!(bare.c2s.last().map(|l| &l.http), Some(&ws), "no handlers table: /ws-xmpp and /http-bind");
        let http = Config::parse(
            "[[listen.http]]\nport = 15280\n[[listen.http.handlers.mod_websockets]]\nhost = '_'\npath = '/ws'",
        )
        .expect("valid");
        let last = http.c2s.last().expect("listener");
        let only_ws = Some(HttpHandlers { websockets: Some("/ws".into()), bosh: None });
        assert_eq!((last.address.port(), &last.http), (15280, &only_ws));
        let bosh = Config::parse("[[listen.http]]\nport = 15280\n[[listen.http.handlers.mod_bosh]]\nhost = '_'")
            .expect("valid");
        let only_bosh = Some(HttpHandlers { websockets: None, bosh: Some("/http-bind".into()) });
        assert_eq!(bosh.c2s.last().map(|l| &l.http), Some(&only_bosh));
        for (text, key) in [
            ("[[listen.http]]\nport = 1\ntls.mode = 'starttls'", "listen.http[0].tls.mode"),
            (
                "[[listen.http]]\nport = 1\n[[listen.http.handlers.mod_websockets]]\npath = 'ws'",
                "listen.http[0].handlers",
            ),
            (
                "[[listen.http]]\nport = 1\n[[listen.http.handlers.mod_websockets]]\nhost = 'a'",
                "listen.http[0].handlers",
            ),
        ] {
            let error = Config::parse(text).expect_err(text).to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    /// The example file in the repository parses and equals the defaults it documents.
    #[test]
    fn example_file_parses() {
        let text = include_str!("../../starling.example.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.general.hosts, vec!["localhost"]);
        assert_eq!(config.admin.unwrap().address.port(), 5551);
        assert_eq!(config.limits.framer, FramerLimits::DEFAULT);
        assert!(config.registration.is_none(), "in-band registration is off by default");
        let defaults = Config::defaults();
        assert_eq!(config.fail2ban, defaults.fail2ban);
        assert!(config.fail2ban.is_some(), "the authentication throttle is on by default");
        assert_eq!(
            config.c2s.iter().map(|l| l.shaper).collect::<Vec<_>>(),
            defaults.c2s.iter().map(|l| l.shaper).collect::<Vec<_>>()
        );
        assert_eq!(config.c2s[0].shaper, Some(Shaper { max_rate: 10_000, burst_size: 100_000 }));
        assert_eq!(config.limits.account_stanza_shaper, defaults.limits.account_stanza_shaper);
        assert_eq!(config.limits.connections_per_address_max, defaults.limits.connections_per_address_max);
        let custom = Config::parse(
            "[shaper.slow]
max_rate = 5
[[listen.c2s]]
port = 1
shaper = 'slow'
",
        )
        .unwrap();
        assert_eq!(custom.c2s[0].shaper, Some(Shaper { max_rate: 5, burst_size: 5 }));
        let lifted = Config::parse(
            "[[listen.c2s]]
port = 1
shaper = 'none'
[limits]
account_stanza_shaper = 'none'",
        )
        .unwrap();
        assert_eq!((lifted.c2s[0].shaper, lifted.limits.account_stanza_shaper), (None, None));
        assert!(
            Config::parse(
                "[[listen.c2s]]
port = 1
shaper = 'missing'
"
            )
            .is_err(),
            "an unknown shaper is an error"
        );
        assert!(Config::parse(
            "[shaper.zero]
max_rate = 0
[[listen.c2s]]
port = 1
shaper = 'zero'"
        )
        .is_err());
        let open = Config::parse("[modules.mod_register]\nregistration_timeout = 60").unwrap();
        assert_eq!(open.registration.unwrap().interval, Duration::from_secs(60));
        assert!(Config::parse("[modules.mod_register]\ncaptcha = true").is_err(), "unknown keys are errors");
    }

    /// Modules: the example lists every one (what a node without a file runs); a
    /// `[modules]` table runs exactly what it lists, as in MongooseIM; unknown modules
    /// and options are errors naming them.
    #[test]
    fn modules_are_listed_like_mongooseim() {
        let example = Config::parse(include_str!("../../starling.example.toml")).unwrap();
        assert_eq!(example.modules, starling_modules::Config::all());
        assert_eq!(Config::defaults().modules, starling_modules::Config::all());
        let only = Config::parse("[modules.mod_ping]\n[modules.mod_roster]\nversioning = false").unwrap().modules;
        assert!(only.ping && !only.carbons && only.mam.is_none() && only.roster.is_some_and(|r| !r.versioning));
        let writer = Config::parse("[modules.mod_mam.async_writer]\nbatch_size = 7\nflush_interval = 9").unwrap();
        let mam = writer.modules.mam.unwrap();
        assert_eq!((mam.batch_size, mam.flush_interval), (7, Duration::from_millis(9)));
        for (text, key) in [
            ("[modules.mod_muc_magic]", "mod_muc_magic"),
            ("[modules.mod_ping]\nsend_pings = true", "send_pings"),
            ("[modules.mod_mam]\nmax_result_limit = 0", "modules.mod_mam.max_result_limit"),
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text:?} gave {error:?}");
        }
    }

    /// Unknown keys and bad values are errors that name the key.
    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[general]\nhostz = ['a']", "hostz"),
            ("[limits]\nstanza_bytes_max = 10", "limits.stanza_bytes_max"),
            ("[limits]\ndepth_max = 1000", "limits.depth_max"),
            ("[[listen.c2s]]\nport = 5222\ntls.mode = 'maybe'", "listen.c2s[0].tls.mode"),
            ("[general]\nloglevel = 'loud'", "general.loglevel"),
            ("[general]\nhosts = ['bad host']", "general.hosts"),
            ("[auth]\nsasl_mechanisms = ['md5']", "auth.sasl_mechanisms"),
            ("[outgoing_pools.rdbms.default.connection]\ndriver = 'mysql'", "driver"),
            ("[listen.admin]\nusername = 'a'", "listen.admin"),
        ];
        for (text, key) in cases {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text:?} gave {error:?}");
        }
    }

    /// Domains are normalised like JIDs.
    #[test]
    fn hosts_are_normalised() {
        let config = Config::parse("[general]\nhosts = ['Example.ORG']").unwrap();
        assert_eq!(config.general.hosts, vec!["example.org"]);
    }
}
