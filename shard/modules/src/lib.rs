//! starling-modules: Starling's XMPP features, one module per protocol concept, each
//! behind the one interface of `starling_shard::module::Module`, switched on by
//! `[modules.mod_*]` in the config as in MongooseIM.
//!
//! ```text
//!  server: Config ([modules.*]) --build()--> ModuleFactory --per core--> [Rc<dyn Module>]
//!  each core: disco, ping, version, csi, blocking, pep, carbons, presence, roster,
//!             subscription, mam, offline, vcard, private, last  (hook order)
//!             sharing one per-core Ctx: the storage pool, the config and the
//!             account cache (roster, block list and archive preferences, loaded in
//!             one storage round trip per account)
//! ```
//! A module reads another module's data only through that module's functions
//! (`roster::subscribers`, `blocking::blocks`, ...), which answer "nothing" when the
//! other module is off. A module that is absent does nothing and advertises nothing.
//!
//! Per-session state (what an idle session costs, see `starling_shard`'s budget):
//! presence keeps the last available presence of an available session and its
//! directed-presence list; pep keeps a client's notify list (shared between sessions
//! with the same capabilities); csi keeps stanzas held for an inactive client; the
//! others keep one bit on the session (carbons, roster interest) or nothing.

pub mod account;
pub mod blocking;
pub mod carbons;
pub mod csi;
pub mod delay;
pub mod disco;
pub mod last;
pub mod mam;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod roster;
pub mod store;
pub mod stream_management;
pub mod subscription;
pub mod vcard;
pub mod version;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use starling_shard::db::DbPool;
use starling_shard::module::{ModuleFactory, Modules};
use starling_shard::Core;

pub use store::Store;

/// Session flag bits the modules keep (replicated with the session).
pub mod flags {
    /// XEP-0280: the resource enabled message carbons.
    pub const CARBONS: u8 = 1 << 0;
    /// RFC 6121 section 2.1.6: the resource asked for the roster, so it gets pushes.
    pub const ROSTER_INTERESTED: u8 = 1 << 1;
}

/// Which modules run and their options: `[modules.mod_*]`, MongooseIM's names.
/// `None` means the module is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub roster: Option<RosterConfig>,
    pub mam: Option<MamConfig>,
    pub offline: Option<OfflineConfig>,
    pub carbons: bool,
    pub blocking: bool,
    pub pep: bool,
    pub vcard: bool,
    pub private: bool,
    pub last: bool,
    pub csi: Option<CsiConfig>,
    pub disco: bool,
    pub ping: bool,
    pub version: Option<VersionConfig>,
    /// XEP-0077 in-band registration (`[modules.mod_register]`) is offered: the
    /// stream negotiation does it; disco lists `jabber:iq:register` then.
    pub register: bool,
    /// XEP-0198 (`[modules.mod_stream_management]`): the runtime does it
    /// (`Settings::stream_management`); the module advertises it.
    pub stream_management: Option<starling_shard::resume::StreamManagement>,
    /// BOSH session options (`[modules.mod_bosh]`; the runtime serves BOSH where a
    /// `[[listen.http]]` listener has a `mod_bosh` handler).
    pub bosh: starling_shard::settings::BoshSettings,
    /// XEP-0388 SASL2 (`[modules.mod_sasl2]`): the stream negotiation does it.
    pub sasl2: bool,
    /// XEP-0386 Bind 2 inside SASL2 (`[modules.mod_bind2]`).
    pub bind2: bool,
    /// XEP-0484 FAST tokens (`[modules.mod_fast_auth_token]`): how long one is valid,
    /// and how close to its expiry a login with it gets a new one.
    pub fast_auth_token: Option<(Duration, Duration)>,
}

/// MongooseIM's `mod_stream_management` defaults: 100 unacknowledged stanzas, an
/// `<r/>` after every stanza, 600 s to resume.
pub const STREAM_MANAGEMENT_DEFAULTS: starling_shard::resume::StreamManagement =
    starling_shard::resume::StreamManagement { buffer_max: 100, ack_freq: 1, resume_timeout: Duration::from_secs(600) };

/// MongooseIM's `mod_fast_auth_token` default `validity_period.access`: 3 days.
pub const FAST_TOKEN_VALIDITY: Duration = Duration::from_secs(3 * 24 * 3600);

/// MongooseIM's `validity_period.rotate_before_expire` default: 6 hours.
pub const FAST_TOKEN_ROTATE_BEFORE: Duration = Duration::from_secs(6 * 3600);

/// `[modules.mod_roster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterConfig {
    /// XEP-0237 roster versioning (`versioning`, default true).
    pub versioning: bool,
}

/// `[modules.mod_mam]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MamConfig {
    /// Most messages one query page returns (`max_result_limit`, default 50 in
    /// MongooseIM; 250 here).
    pub max_result_limit: usize,
    /// Page size without `<max/>` (`default_result_limit`, default 50).
    pub default_result_limit: usize,
    /// The asynchronous writer (`async_writer`): rows wait at most this long before
    /// they are written (`flush_interval`, ms, default 2,000 in MongooseIM; 50 here so
    /// a query right after a message finds it even without the flush a query does).
    pub flush_interval: Duration,
    /// Rows per write transaction (`batch_size`, default 30 in MongooseIM; 500 here).
    pub batch_size: usize,
    /// Rows waiting or being written per core above which the senders whose
    /// messages are archived wait (backpressure: nothing is dropped).
    pub queue_max: usize,
    /// Messages one account's archive keeps (`max_user_archived_messages`, Starling's
    /// addition in the shape of MongooseIM's `max_user_offline_messages`; 0: no
    /// limit). Past it the oldest are purged, in steps of a tenth of the quota.
    pub max_user_archived_messages: u64,
}

/// `[modules.mod_offline]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineConfig {
    /// Messages stored per account (MongooseIM's `max_user_offline_messages` access
    /// rule; default 1,000); beyond it the sender gets `resource-constraint`.
    pub max_user_offline_messages: usize,
}

/// `[modules.mod_csi]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsiConfig {
    /// Stanzas held for an inactive client before all are sent (`buffer_max`,
    /// MongooseIM's default 20; 500 here since only presence and chat states wait).
    pub buffer_max: usize,
}

/// `[modules.mod_version]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionConfig {
    /// Also report the operating system (`os_info`, default false).
    pub os_info: bool,
}

impl Config {
    /// Every module on with its defaults, in-band registration off: a node without a
    /// config file runs this.
    pub fn all() -> Config {
        Config {
            roster: Some(RosterConfig { versioning: true }),
            mam: Some(MamConfig::default()),
            offline: Some(OfflineConfig { max_user_offline_messages: 1000 }),
            carbons: true,
            blocking: true,
            pep: true,
            vcard: true,
            private: true,
            last: true,
            csi: Some(CsiConfig { buffer_max: 500 }),
            disco: true,
            ping: true,
            version: Some(VersionConfig { os_info: false }),
            register: false,
            stream_management: Some(STREAM_MANAGEMENT_DEFAULTS),
            bosh: starling_shard::settings::BoshSettings::default(),
            sasl2: true,
            bind2: true,
            fast_auth_token: Some((FAST_TOKEN_VALIDITY, FAST_TOKEN_ROTATE_BEFORE)),
        }
    }

    /// No module at all: the runtime alone.
    pub fn none() -> Config {
        Config {
            roster: None,
            mam: None,
            offline: None,
            carbons: false,
            blocking: false,
            pep: false,
            vcard: false,
            private: false,
            last: false,
            csi: None,
            disco: false,
            ping: false,
            version: None,
            register: false,
            stream_management: None,
            bosh: starling_shard::settings::BoshSettings::default(),
            sasl2: false,
            bind2: false,
            fast_auth_token: None,
        }
    }
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            max_result_limit: 250,
            default_result_limit: 50,
            flush_interval: Duration::from_millis(50),
            batch_size: 500,
            queue_max: 20_000,
            max_user_archived_messages: 100_000,
        }
    }
}

/// What the modules of one core share: storage, the config, and the account cache.
pub struct Ctx {
    pub(crate) db: DbPool<dyn Store>,
    pub(crate) config: Arc<Config>,
    /// The IM state of the accounts homed here that are in use (`account.rs`).
    pub(crate) accounts: RefCell<HashMap<Box<str>, account::Slot>>,
    /// Presence kept per session (`presence.rs`).
    pub(crate) presence: RefCell<HashMap<starling_shard::SessionId, presence::Kept>>,
}

impl Ctx {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

/// The factory the runtime calls on each core: the enabled modules, in hook order.
pub fn build(config: Config, db: DbPool<dyn Store>) -> Arc<ModuleFactory> {
    let config = Arc::new(config);
    Arc::new(move |_core: &Rc<Core>| modules(config.clone(), db.clone()))
}

/// The stream features (raw XML) the enabled modules offer after authentication,
/// for the negotiation's bind features (built once at startup).
pub fn stream_features(config: &Config, db: DbPool<dyn Store>) -> String {
    modules(Arc::new(config.clone()), db).iter().map(|m| m.stream_features()).collect()
}

/// The namespaces a Bind 2 request may enable inline with `config` (XEP-0386
/// section 2): the modules' and, with stream management on, XEP-0198's.
pub fn inline_features(config: &Config, db: DbPool<dyn Store>) -> Vec<String> {
    let mut features: Vec<String> = modules(Arc::new(config.clone()), db)
        .iter()
        .flat_map(|m| m.inline_features().iter().map(|f| (*f).to_owned()))
        .collect();
    if config.stream_management.is_some() {
        features.push(starling_wire::sm::NS_SM.to_owned());
    }
    features
}

fn modules(config: Arc<Config>, db: DbPool<dyn Store>) -> Modules {
    let ctx = Rc::new(Ctx {
        db,
        config: config.clone(),
        accounts: RefCell::new(HashMap::new()),
        presence: RefCell::new(HashMap::new()),
    });
    let mut list: Modules = Vec::new();
    // Hook order: blocking decides before anything is delivered, stored or copied;
    // caps (pep) read presence before presence takes it; offline starts delivering
    // stored messages on the initial presence before presence broadcasts it; mam
    // records before offline takes undeliverable messages over.
    if config.blocking {
        list.push(Rc::new(blocking::Blocking::new(ctx.clone())));
    }
    if config.pep {
        list.push(Rc::new(pep::Pep::new(ctx.clone())));
    }
    if let Some(csi) = &config.csi {
        list.push(Rc::new(csi::Csi::new(csi.buffer_max)));
    }
    if config.carbons {
        list.push(Rc::new(carbons::Carbons));
    }
    if let Some(mam) = &config.mam {
        list.push(Rc::new(mam::Mam::new(ctx.clone(), mam.clone())));
    }
    if let Some(offline) = &config.offline {
        list.push(Rc::new(offline::Offline::new(ctx.clone(), offline.clone())));
    }
    list.push(Rc::new(presence::Presence::new(ctx.clone())));
    if let Some(roster) = &config.roster {
        list.push(Rc::new(roster::RosterModule::new(ctx.clone(), roster.clone())));
        list.push(Rc::new(subscription::Subscription::new(ctx.clone())));
    }
    if config.vcard {
        list.push(Rc::new(vcard::Vcard::new(ctx.clone())));
    }
    if config.private {
        list.push(Rc::new(private::Private::new(ctx.clone())));
    }
    if config.last {
        list.push(Rc::new(last::Last::new(ctx.clone())));
    }
    if config.ping {
        list.push(Rc::new(ping::Ping));
    }
    if let Some(version) = &config.version {
        list.push(Rc::new(version::Version::new(version.clone())));
    }
    if config.stream_management.is_some() {
        list.push(Rc::new(stream_management::StreamManagement));
    }
    if config.disco {
        let disco = disco::Disco::new(&list, config.register);
        list.push(Rc::new(disco));
    }
    list
}

/// Whether `haystack` contains `needle`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The first offset of `needle` in `haystack` (memchr's SIMD substring search: the
/// naive window compare was 5% of a core's time in the throughput profile).
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
