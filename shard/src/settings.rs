//! What the server hands the cores: listeners (pre-bound sockets, one per core),
//! TLS configuration, and the limits of `limits.rs`.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use starling_wire::c2s::C2sSettings;
use starling_wire::limits::FramerLimits;

use crate::limits::Limits;

/// How a listener starts its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain TCP; STARTTLS offered or required per `C2sSettings::tls`.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

/// One c2s listener's negotiation settings. Its sockets (one per core, SO_REUSEPORT,
/// bound by the server so tests can use port 0) are passed to `Node::start` apart.
pub struct Listener {
    pub c2s: Arc<C2sSettings>,
    pub tls: ListenerTls,
    /// Bytes per second each bound session of this listener may send (MongooseIM's
    /// listener `shaper`); `None`: unshaped.
    pub shaper: Option<crate::guard::Shaper>,
    /// `Some` for an HTTP listener (`[[listen.http]]`): a connection sends a request
    /// head first and speaks XMPP only after an RFC 7395 WebSocket upgrade.
    pub http: Option<starling_wire::http::Routes>,
}

/// Listening sockets: `[core][listener]`.
pub type ListenerSockets = Vec<Vec<OwnedFd>>;

/// Everything the cores need, fixed for the node's lifetime.
pub struct Settings {
    /// Normalised domains served.
    pub hosts: Vec<String>,
    /// CPUs to pin executors to; one executor per entry.
    pub cpus: Vec<usize>,
    pub listeners: Vec<Listener>,
    pub framer: FramerLimits,
    pub limits: Limits,
    /// TLS for STARTTLS (no ALPN) and direct TLS (ALPN `xmpp-client`).
    pub tls_starttls: Option<Arc<rustls::ServerConfig>>,
    pub tls_direct: Option<Arc<rustls::ServerConfig>>,
    /// TLS for HTTPS listeners (ALPN `http/1.1`).
    pub tls_http: Option<Arc<rustls::ServerConfig>>,
    /// RFC 5929 `tls-server-end-point` data for our certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
    /// Clustering, when configured.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// XEP-0198 acknowledgements and resumption (`[modules.mod_stream_management]`);
    /// `None`: off.
    pub stream_management: Option<crate::resume::StreamManagement>,
    /// BOSH sessions (`[modules.mod_bosh]`, served where a `[[listen.http]]`
    /// listener has a `mod_bosh` handler).
    pub bosh: BoshSettings,
    /// Builds each core's feature modules (`module.rs`), in hook order.
    pub modules: Arc<crate::module::ModuleFactory>,
}

impl Settings {
    /// One core on CPU 0 serving `localhost`, no listener, no TLS, no cluster, test
    /// limits, and `modules`: what in-memory harnesses, benchmarks and fuzz targets
    /// run (change fields after).
    pub fn one_core(modules: Arc<crate::module::ModuleFactory>) -> Settings {
        Settings {
            hosts: vec!["localhost".into()],
            cpus: vec![0],
            listeners: Vec::new(),
            framer: FramerLimits::DEFAULT,
            limits: Limits::for_tests(),
            tls_starttls: None,
            tls_direct: None,
            tls_http: None,
            stream_management: None,
            bosh: BoshSettings::default(),
            tls_server_end_point: None,
            cluster: None,
            modules,
        }
    }
}

/// `mod_bosh`'s options (MongooseIM's names), in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoshSettings {
    /// A session with no request for this long ends (its stream is cut, as if the
    /// connection died: stream management parks it).
    pub inactivity: u32,
    /// The longest a request is held (a client asking more gets this).
    pub max_wait: u32,
    /// The longest `pause` a client may ask for.
    pub max_pause: u32,
}

impl Default for BoshSettings {
    fn default() -> BoshSettings {
        BoshSettings { inactivity: 30, max_wait: 60, max_pause: 120 }
    }
}
