//! One simulated user: connect, log in the way amoc does (stream, features, auth,
//! stream restart, bind, initial presence), then follow the profile, measuring login
//! and delivery latency.
//!
//! The client side of the protocol uses `starling-wire` (framer, SCRAM). Everything a
//! user holds while idle is its socket, its framer and a few counters: reads use the
//! worker thread's shared buffer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;
use starling_wire::sasl::{self, scram};

use crate::profile::{self, Profile, ProfileKind, Share};
use crate::stats::{self, Counters};

/// How users authenticate (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// SCRAM-SHA-256 with the salted password computed once per user and reused.
    Scram,
    /// SCRAM-SHA-256 paying PBKDF2 on every login.
    ScramCold,
    /// SASL PLAIN.
    Plain,
}

/// How users log in (`--login`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoginMode {
    /// RFC 6120: SASL, stream restart, resource binding (what amoc does).
    #[default]
    Legacy,
    /// XEP-0388 SASL2 with an XEP-0386 Bind 2 request (and XEP-0198 inline with
    /// `--sm`): no stream restart, no bind round trip.
    Sasl2,
    /// SASL2 asking for a XEP-0484 token on the first login; every later login of
    /// the same user (churn) uses the token: one HMAC, no SCRAM round trip.
    Fast,
}

impl std::str::FromStr for LoginMode {
    type Err = String;
    fn from_str(text: &str) -> Result<LoginMode, String> {
        match text {
            "legacy" => Ok(LoginMode::Legacy),
            "sasl2" => Ok(LoginMode::Sasl2),
            "fast" => Ok(LoginMode::Fast),
            other => Err(format!("unknown login mode {other:?} (legacy, sasl2, fast)")),
        }
    }
}

/// How the load generator's clients use TLS (`--tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP (the server's listener must allow it).
    None,
    /// STARTTLS (RFC 6120 section 5), as on a default listener.
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(text: &str) -> Result<TlsMode, String> {
        match text {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::Starttls),
            "direct" => Ok(TlsMode::Direct),
            other => Err(format!("unknown TLS mode {other:?} (none, starttls, direct)")),
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(text: &str) -> Result<AuthMode, String> {
        match text {
            "scram" => Ok(AuthMode::Scram),
            "scram-cold" => Ok(AuthMode::ScramCold),
            "plain" => Ok(AuthMode::Plain),
            other => Err(format!("unknown auth mode {other:?} (scram, scram-cold, plain)")),
        }
    }
}

/// What every user of a run shares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSettings {
    /// Servers (nodes of one cluster, say); user n logs in to `targets[n % len]`.
    pub targets: Vec<SocketAddr>,
    pub domain: String,
    pub auth: AuthMode,
    /// `{n}` is replaced by the user's number.
    pub user_template: String,
    pub password_template: String,
    /// Total users of the run (all workers) and the first user number.
    pub users: u64,
    pub first_user: u64,
    pub profile: Profile,
    /// Seconds from the start until users log out.
    pub duration: f64,
    /// Body size of each message in bytes (at least the timestamp).
    pub body_bytes: usize,
    /// Salt derivation and iteration count used by `starling-loadgen accounts`, for
    /// the cached SCRAM keys.
    pub salt_seed: String,
    pub iterations: u32,
    /// Send the legacy session request after binding (amoc does).
    pub legacy_session: bool,
    /// Plain TCP, STARTTLS or direct TLS.
    #[serde(default = "no_tls")]
    pub tls: TlsMode,
    /// Legacy SASL and bind, SASL2 + Bind 2, or FAST.
    #[serde(default)]
    pub login: LoginMode,
    /// XEP-0198 stream management, resumable: acknowledge what the server asks for.
    #[serde(default)]
    pub sm: bool,
    /// RFC 7395: connect over WebSocket at this path (`--transport websocket`;
    /// `--tls direct` makes it wss://); `None`: XMPP over TCP.
    #[serde(default)]
    pub websocket: Option<String>,
}

fn no_tls() -> TlsMode {
    TlsMode::None
}

impl RunSettings {
    /// The server user `user` logs in to: users are spread over the targets by
    /// number, so closed-loop pairs (n, n+1) cross between two nodes.
    pub fn target(&self, user: u64) -> SocketAddr {
        self.targets[(user % self.targets.len() as u64) as usize]
    }

    pub fn user_name(&self, user: u64) -> String {
        self.user_template.replace("{n}", &user.to_string())
    }

    pub fn password(&self, user: u64) -> String {
        self.password_template.replace("{n}", &user.to_string())
    }

    /// The account user `user` logs in as (`--roster-spread`).
    pub fn account(&self, user: u64) -> u64 {
        profile::account(user, self.first_user, self.profile.roster_spread)
    }

    /// Accounts on the roster ring.
    pub fn accounts(&self) -> u64 {
        self.users * self.profile.roster_spread.max(1)
    }

    fn bare_jid(&self, account: u64) -> String {
        format!("{}@{}", self.user_name(account), self.domain)
    }

    /// When messaging begins: the ramp is over, with a fifth of it plus two seconds to
    /// spare for logins that ran late, so every recipient is online.
    pub fn messaging_start(&self) -> Duration {
        self.profile.ramp(self.users).mul_f64(1.2) + Duration::from_secs(2)
    }

    /// Messaging stops this long before the end so messages in flight arrive.
    pub fn messaging_end(&self) -> Duration {
        Duration::from_secs_f64((self.duration - 2.0).max(0.0))
    }
}

/// A closed-loop pair's shared state: the receiver counts, the sender waits.
#[derive(Default)]
pub struct Pair {
    delivered: Cell<u64>,
    waker: Cell<Option<Waker>>,
}

/// One worker's world.
pub struct Worker {
    pub settings: RunSettings,
    pub share: Share,
    pub start: Instant,
    pub sources: Vec<IpAddr>,
    pub counters: RefCell<Counters>,
    pub login_latency: RefCell<Histogram<u64>>,
    pub delivery_latency: RefCell<Histogram<u64>>,
    /// Cached salted passwords (local index), for `AuthMode::Scram`.
    pub salted: Vec<Vec<u8>>,
    pub pairs: RefCell<HashMap<u64, Rc<Pair>>>,
    /// XEP-0484 tokens issued to this worker's users (local index), for `--login fast`.
    pub tokens: RefCell<HashMap<u64, String>>,
}

impl Worker {
    fn count(&self, update: impl FnOnce(&mut Counters)) {
        update(&mut self.counters.borrow_mut());
    }

    fn since_start(&self) -> Duration {
        self.start.elapsed()
    }

    fn pair(&self, sender: u64) -> Rc<Pair> {
        self.pairs.borrow_mut().entry(sender).or_default().clone()
    }
}

/// Monotonic nanoseconds, comparable across processes on one host.
pub fn monotonic_nanos() -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// Deterministic per-user salt, so `accounts` and `run` agree without sharing files.
pub fn salt_for(seed: &str, user: &str, domain: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_bytes());
    ring::hmac::sign(&key, format!("{user}@{domain}").as_bytes()).as_ref()[..16].to_vec()
}

#[derive(Debug)]
enum LoginError {
    Connect,
    Refused,
    StreamError,
    Closed,
}

/// A stream with its framer.
struct Conn {
    stream: crate::net::Stream,
    framer: Framer,
    /// With stream management: stanzas received since it was enabled (XEP-0198 `h`).
    handled: Option<u32>,
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), LoginError> {
        crate::net::write_all(&mut self.stream, bytes).await.map_err(|_| LoginError::Closed)
    }

    /// The next frame as text (login only: allocation is fine there).
    async fn next_text(&mut self) -> Result<String, LoginError> {
        loop {
            let mut empty: &[u8] = &[];
            match self.framer.next(&mut empty) {
                Ok(Some(Frame::StreamHeader(b) | Frame::Element(b))) => {
                    let text = String::from_utf8_lossy(b).into_owned();
                    if text.starts_with("<stream:error") {
                        return Err(LoginError::StreamError);
                    }
                    return Ok(text);
                }
                Ok(Some(Frame::StreamClose)) | Err(_) => return Err(LoginError::Closed),
                Ok(None) => {}
            }
            let framer = &mut self.framer;
            let n = crate::net::read_with(&mut self.stream, |bytes| framer.stash(bytes))
                .await
                .map_err(|_| LoginError::Closed)?;
            if n == 0 {
                return Err(LoginError::Closed);
            }
        }
    }

    /// Reads until an element starting with `prefix`.
    async fn expect(&mut self, prefix: &str) -> Result<String, LoginError> {
        for _ in 0..16 {
            let frame = self.next_text().await?;
            if frame.starts_with(prefix) {
                return Ok(frame);
            }
        }
        Err(LoginError::Refused)
    }
}

fn text_of(element: &str) -> &str {
    element.split_once('>').map(|(_, rest)| rest.split('<').next().unwrap_or("")).unwrap_or("")
}

/// Runs user `user` (local index `local`) until the end of the run.
pub async fn run_user(worker: Rc<Worker>, user: u64, local: u64) {
    let settings = &worker.settings;
    let end = Duration::from_secs_f64(settings.duration);
    let source = worker.sources.get(local as usize % worker.sources.len().max(1)).copied();
    loop {
        let started = Instant::now();
        worker.count(|c| c.connect_attempts += 1);
        let login =
            glommio::timer::timeout(Duration::from_secs(30), async { Ok(login(&worker, user, local, source).await) })
                .await;
        let conn = match login {
            Ok(Ok(conn)) => conn,
            Ok(Err(LoginError::Connect)) => {
                worker.count(|c| c.connect_failures += 1);
                retry_pause(&worker, end).await;
                if worker.since_start() >= end {
                    return;
                }
                continue;
            }
            Ok(Err(error)) => {
                worker.count(|c| {
                    c.login_failures += 1;
                    c.stream_errors += u64::from(matches!(error, LoginError::StreamError));
                });
                retry_pause(&worker, end).await;
                if worker.since_start() >= end {
                    return;
                }
                continue;
            }
            Err(_) => {
                worker.count(|c| c.login_failures += 1);
                if worker.since_start() >= end {
                    return;
                }
                continue;
            }
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        let _ = worker.login_latency.borrow_mut().record(micros.min(3_600_000_000));
        let at = (worker.since_start().as_millis() as u64).max(1);
        worker.count(|c| {
            c.logins += 1;
            c.sessions += 1;
            if c.first_login_ms == 0 {
                c.first_login_ms = at;
            }
            c.last_login_ms = c.last_login_ms.max(at);
        });
        let until = match settings.profile.session_lifetime {
            Some(lifetime) => (worker.since_start() + lifetime).min(end),
            None => end,
        };
        let ended = session(&worker, user, conn, until).await;
        worker.count(|c| {
            c.sessions -= 1;
            match ended {
                Ended::Logout => c.logouts += 1,
                Ended::Closed => c.disconnects += 1,
                Ended::StreamError => {
                    c.stream_errors += 1;
                    c.disconnects += 1;
                }
            }
        });
        if settings.profile.kind != ProfileKind::Churn || worker.since_start() >= end {
            return;
        }
    }
}

async fn retry_pause(worker: &Worker, end: Duration) {
    let left = end.saturating_sub(worker.since_start());
    glommio::timer::sleep(left.min(Duration::from_secs(1))).await;
}

async fn login(worker: &Worker, user: u64, local: u64, source: Option<IpAddr>) -> Result<Conn, LoginError> {
    let settings = &worker.settings;
    let tcp = crate::net::connect(source, settings.target(user)).map_err(|_| LoginError::Connect)?;
    let mut stream = crate::net::Stream::Plain(tcp);
    if settings.tls == TlsMode::Direct {
        let tls = stream.start_tls(crate::net::client_tls(), &settings.domain).await;
        stream = tls.map_err(|_| LoginError::Connect)?;
    }
    if let Some(path) = &settings.websocket {
        stream = stream.upgrade_websocket(&settings.domain, path).await.map_err(|_| LoginError::Connect)?;
    }
    let mut conn = Conn { stream, framer: Framer::new(FramerLimits::DEFAULT), handled: None };
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
        settings.domain
    );
    conn.send(header.as_bytes()).await.map_err(|_| LoginError::Connect)?;
    conn.expect("<stream:stream").await?;
    conn.expect("<stream:features").await?;
    if settings.tls == TlsMode::Starttls {
        conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
        conn.expect("<proceed").await?;
        let plain = std::mem::replace(&mut conn.stream, crate::net::Stream::Closed);
        conn.stream =
            plain.start_tls(crate::net::client_tls(), &settings.domain).await.map_err(|_| LoginError::Connect)?;
        conn.framer.reset();
        conn.send(header.as_bytes()).await?;
        conn.expect("<stream:stream").await?;
        conn.expect("<stream:features").await?;
    }
    let name = settings.user_name(settings.account(user));
    let password = settings.password(settings.account(user));
    if settings.login != LoginMode::Legacy {
        sasl2_login(worker, &mut conn, user, &name, &password, local).await?;
        conn.send(b"<presence/>").await?;
        return Ok(conn);
    }
    match settings.auth {
        AuthMode::Plain => {
            let message = format!("\0{name}\0{password}");
            let auth = format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
                sasl::encode_payload(message.as_bytes())
            );
            conn.send(auth.as_bytes()).await?;
        }
        AuthMode::Scram | AuthMode::ScramCold => scram_login(worker, &mut conn, &name, &password, local).await?,
    }
    let outcome = conn.next_text().await?;
    if !outcome.starts_with("<success") {
        return Err(LoginError::Refused);
    }
    conn.framer.reset();
    conn.send(header.as_bytes()).await?;
    conn.expect("<stream:stream").await?;
    conn.expect("<stream:features").await?;
    conn.send(
        b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>lg</resource></bind></iq>",
    )
    .await?;
    let bound = conn.expect("<iq").await?;
    if !bound.contains("type='result'") && !bound.contains("type=\"result\"") {
        return Err(LoginError::Refused);
    }
    if settings.legacy_session {
        conn.send(b"<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await?;
        conn.expect("<iq").await?;
    }
    if settings.sm {
        conn.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await?;
        conn.expect("<enabled").await?;
        conn.handled = Some(0);
    }
    conn.send(b"<presence/>").await?;
    Ok(conn)
}

/// XEP-0388 + XEP-0386 (+ XEP-0484): one `<authenticate/>` carrying the SCRAM
/// client-first message (or a FAST token's proof), a user-agent id and a Bind 2
/// request (with XEP-0198 inline for `--sm`); SCRAM needs one more round trip,
/// FAST none. No stream restart and no bind follow.
async fn sasl2_login(
    worker: &Worker,
    conn: &mut Conn,
    user: u64,
    name: &str,
    password: &str,
    local: u64,
) -> Result<(), LoginError> {
    let settings = &worker.settings;
    let user_agent = format!("00000000-0000-4000-8000-{user:012x}");
    let bind = if settings.sm {
        "<bind xmlns='urn:xmpp:bind:0'><tag>lg</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>"
    } else {
        "<bind xmlns='urn:xmpp:bind:0'><tag>lg</tag></bind>"
    };
    let token = worker.tokens.borrow().get(&local).cloned().filter(|_| settings.login == LoginMode::Fast);
    if let Some(token) = token {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
        let mut initial = format!("{name}\0").into_bytes();
        initial.extend_from_slice(ring::hmac::sign(&key, b"Initiator").as_ref());
        let authenticate = format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
             <user-agent id='{user_agent}'/><fast xmlns='urn:xmpp:fast:0'/>{bind}</authenticate>",
            sasl::encode_payload(&initial)
        );
        conn.send(authenticate.as_bytes()).await?;
    } else {
        let nonce = format!("{:016x}", profile::mix(monotonic_nanos() ^ local));
        let (client, first) = scram::ScramClient::new(scram::Hash::Sha256, name, &nonce, None);
        let request_token = if settings.login == LoginMode::Fast {
            "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
        } else {
            ""
        };
        let authenticate = format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'><initial-response>{}</initial-response>\
             <user-agent id='{user_agent}'/>{request_token}{bind}</authenticate>",
            sasl::encode_payload(&first)
        );
        conn.send(authenticate.as_bytes()).await?;
        let challenge = conn.next_text().await?;
        if !challenge.starts_with("<challenge") {
            return Err(LoginError::Refused);
        }
        let server_first = sasl::decode_payload(text_of(&challenge).as_bytes()).map_err(|_| LoginError::Refused)?;
        let expected_salt = salt_for(&settings.salt_seed, name, &settings.domain);
        let cached = worker.salted.get(local as usize).filter(|_| settings.auth == AuthMode::Scram);
        let (_, last) = client
            .respond(&server_first, |salt, iterations| match cached {
                Some(salted)
                    if salt == expected_salt && iterations.get() == settings.iterations && !salted.is_empty() =>
                {
                    salted.clone()
                }
                _ => scram::salted_password(scram::Hash::Sha256, password, salt, iterations),
            })
            .map_err(|_| LoginError::Refused)?;
        let response = format!("<response xmlns='urn:xmpp:sasl:2'>{}</response>", sasl::encode_payload(&last));
        conn.send(response.as_bytes()).await?;
    }
    let success = conn.next_text().await?;
    if !success.starts_with("<success") {
        // A refused token is forgotten: the next login asks for a new one.
        worker.tokens.borrow_mut().remove(&local);
        return Err(LoginError::Refused);
    }
    if let Some(token) = success.split("<token").nth(1).and_then(|t| t.split(" token='").nth(1)) {
        if let Some(token) = token.split('\'').next() {
            worker.tokens.borrow_mut().insert(local, token.to_owned());
        }
    }
    if settings.sm {
        if !success.contains("<enabled") {
            return Err(LoginError::Refused);
        }
        conn.handled = Some(0);
    }
    Ok(())
}

/// SCRAM-SHA-256: client-first, then client-final from the cached salted password
/// when it matches the server's salt and iteration count.
async fn scram_login(
    worker: &Worker,
    conn: &mut Conn,
    name: &str,
    password: &str,
    local: u64,
) -> Result<(), LoginError> {
    let nonce = format!("{:016x}", profile::mix(monotonic_nanos() ^ local));
    let (client, first) = scram::ScramClient::new(scram::Hash::Sha256, name, &nonce, None);
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        sasl::encode_payload(&first)
    );
    conn.send(auth.as_bytes()).await?;
    let challenge = conn.next_text().await?;
    if !challenge.starts_with("<challenge") {
        return Err(LoginError::Refused);
    }
    let server_first = sasl::decode_payload(text_of(&challenge).as_bytes()).map_err(|_| LoginError::Refused)?;
    let settings = &worker.settings;
    let expected_salt = salt_for(&settings.salt_seed, name, &settings.domain);
    let cached = worker.salted.get(local as usize).filter(|_| settings.auth == AuthMode::Scram);
    let mut cold = false;
    let (_, last) = client
        .respond(&server_first, |salt, iterations| match cached {
            Some(salted) if salt == expected_salt && iterations.get() == settings.iterations && !salted.is_empty() => {
                salted.clone()
            }
            _ => {
                cold = true;
                scram::salted_password(scram::Hash::Sha256, password, salt, iterations)
            }
        })
        .map_err(|_| LoginError::Refused)?;
    if cold && settings.auth == AuthMode::Scram {
        worker.count(|c| c.cold_logins += 1);
    }
    let response =
        format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", sasl::encode_payload(&last));
    conn.send(response.as_bytes()).await
}

/// Precomputes the salted passwords of a worker's users (the "cached client keys").
pub fn warm_keys(settings: &RunSettings, share: &Share) -> Vec<Vec<u8>> {
    if settings.auth != AuthMode::Scram {
        return Vec::new();
    }
    let iterations = NonZeroU32::new(settings.iterations.max(1)).expect("nonzero");
    (share.first..share.first + share.count)
        .map(|user| {
            let account = settings.account(user);
            let name = settings.user_name(account);
            let salt = salt_for(&settings.salt_seed, &name, &settings.domain);
            scram::salted_password(scram::Hash::Sha256, &settings.password(account), &salt, iterations)
        })
        .collect()
}

enum Ended {
    Logout,
    Closed,
    StreamError,
}

enum Wake {
    Input,
    Closed,
    Timer,
    Pair,
}

/// What the user does once logged in, until `until` (from the run's start).
async fn session(worker: &Worker, user: u64, mut conn: Conn, until: Duration) -> Ended {
    let settings = &worker.settings;
    let profile = &settings.profile;
    let first = settings.first_user;
    let partner = profile::partner(user, worker.share.first).filter(|p| *p < worker.share.first + worker.share.count);
    let closed_loop = profile.in_flight.filter(|_| profile.message_rate.is_none() && partner.is_some());
    let open_interval = match (profile.message_interval, profile.message_rate, partner) {
        (Some(interval), _, _) => Some(interval),
        (None, Some(rate), Some(_)) => Some(Duration::from_secs_f64((settings.users / 2).max(1) as f64 / rate)),
        _ => None,
    };
    let messaging_start = settings.messaging_start();
    let messaging_end = settings.messaging_end().min(until);
    let mut next_send = open_interval.map(|interval| messaging_start + profile::first_send(user, interval));
    let pair = partner.filter(|_| closed_loop.is_some()).map(|p| worker.pair(p));
    let own_pair = profile
        .in_flight
        .and_then(|_| (profile::partner(user - 1, worker.share.first) == Some(user)).then(|| worker.pair(user)));
    let mut sent_closed = 0u64;
    let mut sequence = 0u64;
    let mut message = Vec::with_capacity(256);
    let mut setup = (profile.kind == ProfileKind::RosterSetup).then(|| RosterSetup::new(settings, user));
    let mut replies = Vec::new();
    if setup.is_some() || profile.roster > 0 {
        // Like a real client: asking for the roster makes this resource "interested"
        // (RFC 6121 2.1.6), which servers require before they pass on approvals.
        let get = b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>";
        if crate::net::write_all(&mut conn.stream, get).await.is_err() {
            return Ended::Closed;
        }
    }
    loop {
        let now = worker.since_start();
        if let Some(setup) = setup.as_mut().filter(|s| !s.asked && now >= messaging_start) {
            setup.asked = true;
            if crate::net::write_all(&mut conn.stream, &setup.requests(settings)).await.is_err() {
                return Ended::Closed;
            }
        }
        if let Some(setup) = setup.as_mut().filter(|s| !s.checked && now >= messaging_end) {
            setup.checked = true;
            let get = b"<iq type='get' id='final-roster'><query xmlns='jabber:iq:roster'/></iq>";
            if crate::net::write_all(&mut conn.stream, get).await.is_err() {
                return Ended::Closed;
            }
        }
        if now >= until {
            let _ = crate::net::write_all(&mut conn.stream, b"<presence type='unavailable'/></stream:stream>").await;
            return Ended::Logout;
        }
        // Closed loop: keep `in_flight` messages outstanding once messaging starts.
        if let (Some(k), Some(pair), Some(to)) = (closed_loop, &pair, partner) {
            while now >= messaging_start && now < messaging_end && sent_closed < pair.delivered.get() + k as u64 {
                compose(settings, user, to, sequence, &mut message);
                sequence += 1;
                sent_closed += 1;
                if crate::net::write_all(&mut conn.stream, &message).await.is_err() {
                    return Ended::Closed;
                }
                worker.count(|c| c.messages_sent += 1);
            }
        }
        if let (Some(interval), Some(at)) = (open_interval, next_send) {
            if now >= at && now < messaging_end {
                let to = match partner.filter(|_| profile.message_rate.is_some()) {
                    Some(p) => p,
                    None if settings.users >= 2 => {
                        profile::recipient(user, sequence, first, settings.users, profile.neighbours)
                    }
                    None => user,
                };
                compose(settings, user, to, sequence, &mut message);
                sequence += 1;
                if crate::net::write_all(&mut conn.stream, &message).await.is_err() {
                    return Ended::Closed;
                }
                worker.count(|c| c.messages_sent += 1);
                next_send = Some(at + interval);
                continue;
            }
        }
        let mut wake_at = until;
        if let Some(at) = next_send.filter(|at| *at < messaging_end) {
            wake_at = wake_at.min(at);
        }
        if (closed_loop.is_some() || setup.as_ref().is_some_and(|s| !s.asked)) && now < messaging_start {
            wake_at = wake_at.min(messaging_start);
        }
        if setup.as_ref().is_some_and(|s| !s.checked) && now < messaging_end {
            wake_at = wake_at.min(messaging_end);
        }
        // A freed closed-loop slot only matters while messaging (else waiting on it
        // would return at once and spin, starving the other users of this core).
        let sending = now >= messaging_start && now < messaging_end;
        let pair_slot = pair.as_deref().filter(|_| sending);
        let wake = wait(worker, &mut conn, wake_at.saturating_sub(now), pair_slot, sent_closed).await;
        match wake {
            Wake::Input => {
                if let Some(ended) = take_frames(worker, &mut conn, own_pair.as_deref(), setup.as_mut(), &mut replies) {
                    return ended;
                }
                if !replies.is_empty() {
                    if crate::net::write_all(&mut conn.stream, &replies).await.is_err() {
                        return Ended::Closed;
                    }
                    replies.clear();
                }
            }
            Wake::Closed => return Ended::Closed,
            Wake::Timer | Wake::Pair => {}
        }
    }
}

/// Waits for input, the timer, or (closed loop) a delivery freeing a slot.
async fn wait(worker: &Worker, conn: &mut Conn, sleep: Duration, pair: Option<&Pair>, sent: u64) -> Wake {
    let mut timer = glommio::timer::Timer::new(sleep);
    let in_flight = worker.settings.profile.in_flight.unwrap_or(0) as u64;
    futures_lite::future::poll_fn(|cx| {
        let framer = &mut conn.framer;
        let read = crate::net::poll_read_with(&mut conn.stream, cx, &mut |bytes| framer.stash(bytes));
        match read {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wake::Closed),
            Poll::Ready(Ok(_)) => return Poll::Ready(Wake::Input),
            Poll::Pending => {}
        }
        if let Some(pair) = pair {
            if sent < pair.delivered.get() + in_flight {
                return Poll::Ready(Wake::Pair);
            }
            pair.waker.set(Some(cx.waker().clone()));
        }
        if Pin::new(&mut timer).poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        Poll::Pending
    })
    .await
}

/// One user's part of `roster-setup`: ask every neighbour, approve every request,
/// and at the end read the roster back from the server and count the contacts with
/// `both` (the server's word, whatever order it handled crossing requests in).
struct RosterSetup {
    following: Vec<String>,
    preceding: Vec<String>,
    asked: bool,
    checked: bool,
}

/// The id of the roster request that checks the setup's result.
const FINAL_ROSTER_ID: &[u8] = b"final-roster";

impl RosterSetup {
    fn new(settings: &RunSettings, user: u64) -> RosterSetup {
        let account = settings.account(user);
        let (following, preceding) =
            profile::contacts(account, settings.first_user, settings.accounts(), settings.profile.roster);
        RosterSetup {
            following: following.into_iter().map(|a| settings.bare_jid(a)).collect(),
            preceding: preceding.into_iter().map(|a| settings.bare_jid(a)).collect(),
            asked: false,
            checked: false,
        }
    }

    fn requests(&self, settings: &RunSettings) -> Vec<u8> {
        let _ = settings;
        let mut out = Vec::new();
        for contact in self.following.iter().chain(&self.preceding) {
            out.extend_from_slice(format!("<presence type='subscribe' to='{contact}'/>").as_bytes());
        }
        out
    }

    /// Approves a subscription request.
    fn handle(&mut self, element: &[u8], replies: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(element);
        let attribute = |name: &str| {
            let single = format!("{name}='");
            let double = format!("{name}=\"");
            let (at, quote) = match text.find(&single) {
                Some(at) => (at + single.len(), '\''),
                None => (text.find(&double)? + double.len(), '"'),
            };
            text[at..].split(quote).next().map(str::to_owned)
        };
        let (Some(kind), Some(from)) = (attribute("type"), attribute("from")) else { return };
        if kind == "subscribe" {
            let bare = from.split('/').next().unwrap_or(&from);
            replies.extend_from_slice(format!("<presence type='subscribed' to='{bare}'/>").as_bytes());
        }
    }

    /// Contacts with a mutual subscription in the final roster result `element`.
    fn mutual(element: &[u8]) -> usize {
        let count = |needle: &[u8]| element.windows(needle.len()).filter(|w| *w == needle).count();
        count(b"subscription='both'") + count(b"subscription=\"both\"")
    }

    fn expected(&self) -> usize {
        self.following.len() + self.preceding.len()
    }
}

/// Handles every complete frame: timestamps of our messages become latencies,
/// presence is counted, and `roster-setup` answers subscription requests.
fn take_frames(
    worker: &Worker,
    conn: &mut Conn,
    own_pair: Option<&Pair>,
    mut setup: Option<&mut RosterSetup>,
    replies: &mut Vec<u8>,
) -> Option<Ended> {
    loop {
        let mut empty: &[u8] = &[];
        let frame = match conn.framer.next(&mut empty) {
            Ok(Some(frame)) => frame,
            Ok(None) => return None,
            Err(_) => return Some(Ended::Closed),
        };
        let element = match frame {
            Frame::Element(element) => element,
            Frame::StreamClose => return Some(Ended::Closed),
            Frame::StreamHeader(_) => continue,
        };
        if element.starts_with(b"<stream:error") {
            return Some(Ended::StreamError);
        }
        if let Some(handled) = conn.handled.as_mut() {
            // XEP-0198: count stanzas; answer the server's <r/>.
            if element.starts_with(b"<message") || element.starts_with(b"<presence") || element.starts_with(b"<iq") {
                *handled = handled.wrapping_add(1);
            } else if element.starts_with(b"<r ") || element.starts_with(b"<r/") {
                replies.extend_from_slice(format!("<a xmlns='urn:xmpp:sm:3' h='{handled}'/>").as_bytes());
                continue;
            }
        }
        if element.starts_with(b"<presence") {
            worker.count(|c| c.presences_received += 1);
            if let Some(setup) = setup.as_deref_mut() {
                setup.handle(element, replies);
            }
            continue;
        }
        if let Some(setup) = setup.as_deref() {
            if element.starts_with(b"<iq") && memmem(element, FINAL_ROSTER_ID).is_some() {
                let mutual = RosterSetup::mutual(element);
                worker.count(|c| {
                    c.roster_items_mutual += mutual as u64;
                    c.rosters_complete += u64::from(mutual >= setup.expected());
                });
                continue;
            }
        }
        if !element.starts_with(b"<message") {
            continue;
        }
        if memmem(element, b"type='error'").is_some() || memmem(element, b"type=\"error\"").is_some() {
            worker.count(|c| c.message_errors += 1);
            continue;
        }
        let Some(stamp) = timestamp(element) else { continue };
        let micros = monotonic_nanos().saturating_sub(stamp) / 1000;
        let _ = worker.delivery_latency.borrow_mut().record(micros.clamp(1, 3_600_000_000));
        worker.count(|c| c.messages_received += 1);
        if let Some(pair) = own_pair {
            pair.delivered.set(pair.delivered.get() + 1);
            if let Some(waker) = pair.waker.take() {
                waker.wake();
            }
        }
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The send time carried in the body: `lg <nanos> ...`.
fn timestamp(element: &[u8]) -> Option<u64> {
    let at = memmem(element, b"<body>lg ")? + 9;
    let digits = element[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&element[at..at + digits]).ok()?.parse().ok()
}

/// A chat message carrying its send time, padded to the configured body size.
fn compose(settings: &RunSettings, from: u64, to: u64, sequence: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // `to` is a user number: address the account that user logs in as.
    let name = settings.user_name(settings.account(to));
    let _ = write!(out, "<message to='{name}@{}' type='chat' id='{sequence}'><body>", settings.domain);
    let body_start = out.len();
    let _ = write!(out, "lg {} {from} {sequence} ", monotonic_nanos());
    let written = out.len() - body_start;
    out.extend(std::iter::repeat_n(b'x', settings.body_bytes.saturating_sub(written)));
    out.extend_from_slice(b"</body></message>");
}

impl Worker {
    /// Counters plus latency deltas since the last call, as a report line.
    pub fn report(&self, index: usize, done: bool) -> stats::Report {
        let mut login = self.login_latency.borrow_mut();
        let mut delivery = self.delivery_latency.borrow_mut();
        let report = stats::Report {
            worker: index,
            elapsed: self.since_start().as_secs_f64(),
            counters: *self.counters.borrow(),
            login_latency: stats::to_pairs(&login),
            delivery_latency: stats::to_pairs(&delivery),
            done,
            fatal: None,
        };
        login.reset();
        delivery.reset();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            targets: vec!["127.0.0.1:5222".parse().unwrap()],
            domain: "localhost".into(),
            auth: AuthMode::Scram,
            user_template: "user{n}".into(),
            password_template: "pass{n}".into(),
            users: 10,
            first_user: 1,
            profile: Profile::new(ProfileKind::AmocPm, Some(100.0)),
            duration: 30.0,
            body_bytes: 64,
            salt_seed: "seed".into(),
            iterations: 16,
            legacy_session: false,
            tls: TlsMode::None,
            login: LoginMode::Legacy,
            sm: false,
            websocket: None,
        }
    }

    /// Messages carry their send time in a body of the configured size, and the
    /// receiver reads it back.
    #[test]
    fn messages_carry_their_timestamp() {
        let mut out = Vec::new();
        compose(&settings(), 3, 4, 7, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("<message to='user4@localhost' type='chat' id='7'><body>lg "), "{text}");
        let body = text.split("<body>").nth(1).unwrap().split("</body>").next().unwrap();
        assert_eq!(body.len(), 64, "{body}");
        let stamp = timestamp(&out).unwrap();
        assert!(stamp <= monotonic_nanos());
        assert_eq!(timestamp(b"<message><body>hello</body></message>"), None);
    }

    /// Templates and salts are deterministic per user.
    #[test]
    fn names_and_salts() {
        let s = settings();
        assert_eq!((s.user_name(5), s.password(5)), ("user5".to_string(), "pass5".to_string()));
        assert_eq!(salt_for("seed", "user5", "localhost"), salt_for("seed", "user5", "localhost"));
        assert_ne!(salt_for("seed", "user5", "localhost"), salt_for("seed", "user6", "localhost"));
        assert_eq!(s.messaging_start(), Duration::from_millis(2120));
    }

    /// roster-setup approves requests in either quoting, asks every neighbour, and
    /// counts the mutual contacts of the final roster.
    #[test]
    fn roster_setup_approves_and_counts() {
        let mut settings = settings();
        settings.profile.roster = 2;
        settings.users = 10;
        let mut setup = RosterSetup::new(&settings, 5);
        assert_eq!(
            (setup.following.as_slice(), setup.preceding.as_slice()),
            (&["user6@localhost".to_owned()][..], &["user4@localhost".to_owned()][..])
        );
        let mut replies = Vec::new();
        setup.handle(
            b"<presence xml:lang='en' to='user5@localhost/lg' from='user4@localhost' type='subscribe'/>",
            &mut replies,
        );
        setup.handle(b"<presence from=\"user6@localhost/x\" type=\"subscribe\"/>", &mut replies);
        setup.handle(b"<presence from='user6@localhost' type='subscribed'/>", &mut replies);
        assert_eq!(
            replies,
            b"<presence type='subscribed' to='user4@localhost'/><presence type='subscribed' to='user6@localhost'/>"
        );
        assert_eq!(
            setup.requests(&settings),
            b"<presence type='subscribe' to='user6@localhost'/><presence type='subscribe' to='user4@localhost'/>"
        );
        let result = b"<iq id='final-roster' type='result'><query><item jid='a' subscription='both'/><item jid='b' subscription=\"both\"/><item subscription='to'/></query></iq>";
        assert_eq!(RosterSetup::mutual(result), 2);
        assert_eq!(setup.expected(), 2);
    }
}
