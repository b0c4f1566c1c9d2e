//! The client-to-server negotiation state machine (RFC 6120 sections 4-7): stream
//! open, STARTTLS, SASL, stream restart, resource binding, up to an established session.
//!
//! ```text
//!  ExpectStreamHeader --> ExpectStartTls --(proceed; shell runs TLS)--> ExpectStreamHeader
//!         |                                                                 |
//!         +--(TLS already on, or not required)--> ExpectAuth <--------------+
//!                                                    |  SCRAM: FetchCredentials -> ExpectScramFinal
//!                                                    |  PLAIN: VerifyPassword  -> ExpectPlainVerdict
//!                                                    v
//!                    ExpectStreamHeader (authenticated) --> ExpectBind --(Bind; shell picks the
//!                                                            resource)--> ExpectBindResult --> Established
//! ```
//!
//! Inputs are frames from the [`crate::framer::Framer`] and the answers to the
//! [`Action`]s the machine asks of its shell (credential lookups, password checks,
//! session registration). Outputs are bytes appended to `out` and the returned
//! [`Action`]. Errors come back as [`StreamError`]s whose XML (header included, when
//! none was sent yet) is already in `out`: the shell flushes and closes.
//!
//! The machine allocates only while negotiating; the shell drops it once the session
//! is established, so an idle session costs nothing here.

mod features;
pub mod register;
#[cfg(test)]
mod tests;

use std::num::NonZeroU32;

use crate::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use crate::framer::Frame;
use crate::jid::{self, BareJid, FullJid};
use crate::sasl::scram::{self, ChannelBindings, ClientFirst, Credentials, ExpectClientFinal};
use crate::sasl::{self, Mechanism, SaslFailure};
use crate::stanza::write_attribute;
use crate::xml;

pub use features::Features;

pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// How the listener treats TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS must be negotiated before anything else (the default).
    Required,
    /// STARTTLS is offered; SASL is offered without it too.
    Optional,
    /// No TLS on this listener (tests and loopback benchmarks).
    Disabled,
}

/// Settings shared by every connection of a listener (not per connection).
#[derive(Clone, Debug)]
pub struct C2sSettings {
    /// Normalised domains we serve.
    pub hosts: Vec<String>,
    pub tls: TlsPolicy,
    /// Mechanisms offered, in order of preference (`-PLUS` ones only with binding data).
    pub mechanisms: Vec<Mechanism>,
    /// SASL failures before the stream is closed with `policy-violation`.
    pub sasl_attempts_max: u8,
    /// Advertised in XEP-0478 stream limits.
    pub stanza_bytes_max: u32,
    /// Iterations for decoy credentials, so unknown users cost like real ones.
    pub scram_iterations: NonZeroU32,
    /// Secret for decoy credentials; must stay the same across restarts and nodes, or
    /// a prober could tell unknown users (whose salt would change) from real ones.
    pub decoy_secret: Vec<u8>,
    /// Raw XML of extra post-authentication features (stream management, CSI, ...).
    pub bind_features_extra: Vec<u8>,
    /// XEP-0077 in-band registration offered before authentication.
    pub registration: bool,
    /// XEP-0198 resumption: `<resume/>` is accepted in place of a bind request.
    pub resumption: bool,
    /// XEP-0388 SASL2 offered beside SASL.
    pub sasl2: bool,
    /// XEP-0386 Bind 2 inside SASL2 (without it a `<bind/>` there is ignored).
    pub bind2: bool,
    /// Namespaces a Bind 2 request may enable inline (`<inline><feature var/>`).
    pub bind2_inline: Vec<String>,
    /// XEP-0484 FAST tokens (`HT-SHA-256-NONE`) inside SASL2, when on.
    pub fast: Option<FastSettings>,
}

/// XEP-0484 for a listener: how long a token is valid, and the secret tokens are
/// derived with (the shell's: stored records hold only token ids).
#[derive(Clone, Debug)]
pub struct FastSettings {
    pub validity: std::time::Duration,
    /// A FAST login with a token this close to its expiry gets a new one
    /// (MongooseIM's `rotate_before_expire`).
    pub rotate_before: std::time::Duration,
    pub secret: Vec<u8>,
}

/// XEP-0484's namespace, and the one mechanism offered for tokens (no channel
/// binding: draft-schmaus-kitten-sasl-ht).
pub const NS_FAST: &str = "urn:xmpp:fast:0";
pub const FAST_MECHANISM: &str = "HT-SHA-256-NONE";

impl C2sSettings {
    /// Settings for tests: one host, no TLS, every mechanism, three SASL attempts.
    pub fn for_tests() -> C2sSettings {
        C2sSettings {
            hosts: vec!["localhost".to_owned()],
            tls: TlsPolicy::Disabled,
            mechanisms: vec![
                Mechanism::ScramSha256Plus,
                Mechanism::ScramSha1Plus,
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain,
            ],
            sasl_attempts_max: 3,
            stanza_bytes_max: 65_536,
            scram_iterations: NonZeroU32::new(16).expect("nonzero"),
            decoy_secret: b"test decoy secret".to_vec(),
            bind_features_extra: Vec::new(),
            registration: false,
            resumption: false,
            sasl2: true,
            bind2: true,
            bind2_inline: Vec::new(),
            fast: None,
        }
    }
}

/// Randomness for stream ids and nonces, injected so tests are deterministic.
pub trait Entropy {
    fn fill(&mut self, bytes: &mut [u8]);
}

/// Per-call context: shared settings and the core's randomness.
pub struct Context<'a> {
    pub settings: &'a C2sSettings,
    pub entropy: &'a mut dyn Entropy,
}

/// What the shell must do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing; read on.
    Continue,
    /// Flush `out` (it holds `<proceed/>`), drop any plaintext still buffered, run the
    /// TLS handshake, then reset the framer.
    StartTls,
    /// Look up the SCRAM credentials of `username` (a normalised localpart) on `domain`,
    /// then call [`C2s::handle_credentials`].
    FetchCredentials { user: BareJid, hash: scram::Hash },
    /// Check `password` for `user` off the core (PBKDF2; with decoy credentials for an
    /// unknown user), then call [`C2s::handle_password_verdict`].
    VerifyPassword { user: BareJid, password: String },
    /// SASL succeeded: reset the framer for the restarted stream.
    Authenticated { user: BareJid },
    /// Create the account `user` with `password` (XEP-0077), then call
    /// [`C2s::handle_registered`].
    Register { user: BareJid, password: String },
    /// Bind a resource for `user` (`None`: the server picks one), replacing any session
    /// with the same full JID, then call [`C2s::handle_bound`].
    Bind { user: BareJid, resource: Option<String> },
    /// XEP-0386: SASL2 succeeded with a Bind 2 request. Bind `resource` for `user`
    /// (chosen by the machine), enable each `inline` element (raw XML: XEP-0280's
    /// `<enable/>`, XEP-0198's `<enable/>`, XEP-0352's `<inactive/>`, ...), then call
    /// [`C2s::handle_bound`] with what goes into `<bound/>`. No stream restart.
    Bind2 { user: BareJid, resource: String, inline: Vec<Vec<u8>> },
    /// XEP-0484: look up `user`'s FAST tokens for the client install `user_agent` and
    /// derive them, then call [`C2s::handle_fast_tokens`].
    FetchFastTokens { user: BareJid, user_agent: String },
    /// XEP-0484: authenticated; issue a new FAST token for `user` and `user_agent`
    /// (store its record, derive it), then call [`C2s::handle_fast_token`].
    IssueFastToken { user: BareJid, user_agent: String },
    /// XEP-0198 section 5: take over `user`'s session `previd`, whose client handled
    /// `h` of the server's stanzas; then call [`C2s::handle_resumed`] (the session
    /// writes `<resumed/>`) or [`C2s::handle_resume_failed`].
    Resume { user: BareJid, previd: String, h: u32 },
    /// The client closed the stream; our close is in `out`. Close the connection.
    Closed,
}

/// The negotiation of one client stream.
#[derive(Debug)]
pub struct C2s {
    state: State,
    /// Set after the TLS handshake (or from the start on a direct-TLS listener).
    secured: bool,
    bindings: ChannelBindings,
    /// The domain the client asked for in its first header.
    domain: Option<String>,
    sasl_failures: u8,
    /// The client asked for a `-PLUS` mechanism with a channel-binding type this
    /// connection does not support (Debian 12's slixmpp 1.8.3 sends `tls-unique`,
    /// undefined over TLS 1.3). It has channel binding but none in common with us, so a
    /// later `y` flag is not a downgrade (RFC 5802 section 6).
    binding_unshared: bool,
    /// Whether our header for the current stream was sent.
    header_sent: bool,
    /// The XEP-0388 `<authenticate/>` in progress (its answers are SASL2's).
    sasl2: Option<Box<Sasl2Request>>,
}

/// What a SASL2 `<authenticate/>` asked for besides authentication.
#[derive(Debug, Default)]
struct Sasl2Request {
    /// `<user-agent id/>` (XEP-0388 section 2.3): a stable id for the client install.
    user_agent: Option<String>,
    /// `<bind xmlns='urn:xmpp:bind:0'/>` (XEP-0386).
    bind: Option<Bind2Request>,
    /// XEP-0484: `<fast/>` (authenticating with a token) and `<request-token/>`.
    fast: bool,
    request_token: bool,
    /// The token this FAST login used is due for rotation (not the newest, or
    /// near its expiry).
    rotate: bool,
    /// The `<token/>` to put in `<success/>`, once issued.
    token: Option<Vec<u8>>,
    token_asked: bool,
}

#[derive(Debug, Default)]
struct Bind2Request {
    tag: Option<String>,
    /// Each child element but `<tag/>`, as raw XML.
    inline: Vec<Vec<u8>>,
}

/// XEP-0386's namespace.
pub const NS_BIND2: &str = "urn:xmpp:bind:0";

#[derive(Debug)]
enum State {
    ExpectStreamHeader {
        authenticated: Option<BareJid>,
    },
    ExpectStartTls,
    ExpectAuth,
    /// A mechanism without initial response: waiting for `<response/>` with it.
    ExpectInitialResponse {
        mechanism: Mechanism,
    },
    ExpectCredentials {
        first: Box<ClientFirst>,
        user: BareJid,
    },
    ExpectScramFinal {
        server: Box<ExpectClientFinal>,
        user: BareJid,
    },
    ExpectPlainVerdict {
        user: BareJid,
    },
    /// An in-band registration is being carried out by the shell.
    ExpectRegistered {
        id: Box<str>,
    },
    ExpectBind {
        user: BareJid,
    },
    ExpectBindResult {
        id: Box<str>,
    },
    ExpectResumeResult {
        user: BareJid,
    },
    /// SASL2 succeeded; the shell binds for Bind 2 (`additional`: SCRAM's
    /// server-final message for `<additional-data/>`).
    ExpectBind2Result {
        additional: Option<Vec<u8>>,
        /// A XEP-0484 `<token/>` for `<success/>`.
        token: Option<Vec<u8>>,
    },
    /// A FAST authentication: the client's proof, waiting for the user's tokens.
    ExpectFastTokens {
        user: BareJid,
        proof: Vec<u8>,
    },
    /// Authenticated; waiting for a new FAST token.
    ExpectFastToken {
        user: BareJid,
        additional: Option<Vec<u8>>,
    },
    Established,
    Failed,
}

impl C2s {
    /// A fresh stream; `secured` for a direct-TLS (XEP-0368) connection.
    pub fn new(secured: bool) -> C2s {
        C2s {
            state: State::ExpectStreamHeader { authenticated: None },
            secured,
            bindings: ChannelBindings::default(),
            domain: None,
            sasl_failures: 0,
            binding_unshared: false,
            header_sent: false,
            sasl2: None,
        }
    }

    /// Tells the machine TLS is up, with what this connection can bind SCRAM to.
    pub fn handle_tls_established(&mut self, bindings: ChannelBindings) {
        self.secured = true;
        self.bindings = bindings;
    }

    /// Failed SASL attempts on this stream so far (RFC 6120 section 6.4.5; an abort
    /// counts). The shell feeds them to its throttle across connections.
    pub fn sasl_failures(&self) -> u8 {
        self.sasl_failures
    }

    /// The stream was closed (by either side, or by an error).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// The domain of the stream (after the first header).
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// Handles one frame. On error the stream error is already in `out`.
    pub fn handle_frame(
        &mut self,
        context: &mut Context<'_>,
        frame: Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let result = match frame {
            Frame::StreamHeader(header) => self.handle_header(context, header, out),
            Frame::Element(element) => self.handle_element(context, element, out),
            Frame::StreamClose => {
                self.state = State::Failed;
                out.extend_from_slice(b"</stream:stream>");
                Ok(Action::Closed)
            }
        };
        result.map_err(|error| self.fail(context, error, out))
    }

    /// Closes the stream with `error` (framer errors, timeouts, shutdown): writes our
    /// header first if the client has not seen one (RFC 6120 section 4.9.1.2).
    pub fn fail(&mut self, context: &mut Context<'_>, error: StreamError, out: &mut Vec<u8>) -> StreamError {
        if !self.header_sent {
            self.write_header(context, None, out);
        }
        error.write_closing(out);
        self.state = State::Failed;
        error
    }

    /// The SCRAM credentials of the user (`None`: unknown user, a decoy is used).
    pub fn handle_credentials(
        &mut self,
        context: &mut Context<'_>,
        credentials: Option<Credentials>,
        out: &mut Vec<u8>,
    ) {
        let State::ExpectCredentials { first, user } = std::mem::replace(&mut self.state, State::Failed) else {
            panic!("handle_credentials without FetchCredentials");
        };
        let hash = first.hash();
        let credentials = credentials.filter(|c| c.hash == hash).unwrap_or_else(|| {
            Credentials::decoy(hash, user.as_str(), &context.settings.decoy_secret, context.settings.scram_iterations)
        });
        let nonce = nonce(context.entropy);
        // XEP-0474: what this stream advertised (SASL and SASL2 offer the same list).
        let offered = features::offered_mechanisms(context.settings, self.secured, &self.bindings);
        let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        let types = features::channel_binding_types(self.secured, &self.bindings);
        let downgrade = scram::downgrade_hash(hash, &names, (!types.is_empty()).then_some(&types[..]));
        let (server, challenge) = first.challenge(&credentials, &nonce, Some(&downgrade));
        self.write_challenge(&challenge, out);
        self.state = State::ExpectScramFinal { server: Box::new(server), user };
    }

    /// Whether the PLAIN password was right.
    pub fn handle_password_verdict(
        &mut self,
        context: &mut Context<'_>,
        correct: bool,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let State::ExpectPlainVerdict { user } = std::mem::replace(&mut self.state, State::Failed) else {
            panic!("handle_password_verdict without VerifyPassword");
        };
        if correct {
            return Ok(self.authenticated(context, user, None, out));
        }
        self.state = State::ExpectAuth;
        let settings = context.settings;
        self.sasl_failed(SaslFailure::NotAuthorized, settings, out).map_err(|e| self.fail(context, e, out))
    }

    /// The credential lookup or password check could not run (database unavailable):
    /// answers `temporary-auth-failure` (RFC 6120 section 6.5.12). Not counted as a
    /// failed attempt: the client did nothing wrong.
    pub fn handle_store_failure(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.state, State::ExpectAuth) {
            State::ExpectCredentials { .. } | State::ExpectPlainVerdict { .. } | State::ExpectFastTokens { .. } => {}
            other => panic!("handle_store_failure in state {other:?}"),
        }
        self.write_failure(SaslFailure::TemporaryAuthFailure, None, out);
    }

    /// The outcome of an in-band registration (`Err`: `conflict` for a taken name,
    /// `resource-constraint` when rate limited, `internal-server-error` on a store
    /// failure). The stream stays in authentication either way.
    pub fn handle_registered(&mut self, outcome: Result<(), StanzaErrorCondition>, out: &mut Vec<u8>) {
        let State::ExpectRegistered { id } = std::mem::replace(&mut self.state, State::ExpectAuth) else {
            panic!("handle_registered without Register");
        };
        register::write_outcome(&id, outcome, out);
    }

    /// The shell bound `jid`; answers the bind IQ, or for Bind 2 the SASL2
    /// `<success/>` with `bound` (what the inline enables produced) in `<bound/>`.
    /// The session is established.
    pub fn handle_bound(&mut self, jid: &FullJid, bound: &[u8], out: &mut Vec<u8>) {
        let id = match std::mem::replace(&mut self.state, State::Established) {
            State::ExpectBindResult { id } => id,
            State::ExpectBind2Result { additional, token } => {
                write_sasl2_success(additional.as_deref(), jid.as_str(), token.as_deref(), Some(bound), out);
                return;
            }
            _ => panic!("handle_bound without Bind"),
        };
        out.extend_from_slice(b"<iq type='result'");
        write_attribute(out, "id", &id);
        out.extend_from_slice(b"><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
        xml::escape(jid.as_str(), out);
        out.extend_from_slice(b"</jid></bind></iq>");
    }

    /// XEP-0484: the user's unexpired FAST tokens for this client install, each with
    /// whether it is due for rotation (the shell's call: not the newest, or near its
    /// expiry; a login with such a token gets a new one). The client's proof must be
    /// `HMAC-SHA-256(token, "Initiator")` for one of them; the server proves itself
    /// with `HMAC-SHA-256(token, "Responder")`.
    pub fn handle_fast_tokens(
        &mut self,
        context: &mut Context<'_>,
        tokens: &[(String, bool)],
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let State::ExpectFastTokens { user, proof } = std::mem::replace(&mut self.state, State::ExpectAuth) else {
            panic!("handle_fast_tokens without FetchFastTokens");
        };
        for (token, rotate) in tokens {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
            if ring::hmac::verify(&key, b"Initiator", &proof).is_ok() {
                if let Some(request) = self.sasl2.as_mut() {
                    request.rotate = *rotate;
                }
                let responder = ring::hmac::sign(&key, b"Responder").as_ref().to_vec();
                return Ok(self.authenticated(context, user, Some(responder), out));
            }
        }
        self.sasl_failed(SaslFailure::NotAuthorized, context.settings, out).map_err(|e| self.fail(context, e, out))
    }

    /// XEP-0484: the token issued (token, expiry as RFC 3339), or `None` when it
    /// could not be stored (the login goes on without one).
    pub fn handle_fast_token(
        &mut self,
        context: &mut Context<'_>,
        issued: Option<(String, String)>,
        out: &mut Vec<u8>,
    ) -> Action {
        let State::ExpectFastToken { user, additional } = std::mem::replace(&mut self.state, State::Failed) else {
            panic!("handle_fast_token without IssueFastToken");
        };
        if let (Some((token, expiry)), Some(request)) = (issued, self.sasl2.as_mut()) {
            let mut xml = b"<token".to_vec();
            write_attribute(&mut xml, "xmlns", NS_FAST);
            write_attribute(&mut xml, "expiry", &expiry);
            write_attribute(&mut xml, "token", &token);
            xml.extend_from_slice(b"/>");
            request.token = Some(xml);
        }
        self.authenticated(context, user, additional, out)
    }

    /// The shell handed the connection to the session it resumed, which writes
    /// `<resumed/>` and goes on. The negotiation is over.
    pub fn handle_resumed(&mut self) {
        let State::ExpectResumeResult { .. } = std::mem::replace(&mut self.state, State::Established) else {
            panic!("handle_resumed without Resume");
        };
    }

    /// No session to resume (XEP-0198 section 5: unknown, timed out, or another
    /// account's): `<failed/>` with `item-not-found`; the client may bind instead.
    pub fn handle_resume_failed(&mut self, out: &mut Vec<u8>) {
        let State::ExpectResumeResult { user } = std::mem::replace(&mut self.state, State::Failed) else {
            panic!("handle_resume_failed without Resume");
        };
        self.state = State::ExpectBind { user };
        crate::sm::write_failed("item-not-found", None, out);
    }

    /// The shell could not bind (for example the session table is full). After a
    /// Bind 2 request the stream fails: SASL2 has no way back.
    pub fn handle_bind_refused(&mut self, user: BareJid, error: StanzaError, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.state, State::ExpectBind { user }) {
            State::ExpectBindResult { id } => write_iq_error(&id, &error, out),
            State::ExpectBind2Result { .. } => {
                self.state = State::Failed;
                SaslFailure::NotAuthorized.write2(Some("the session could not be bound"), out);
            }
            _ => panic!("handle_bind_refused without Bind"),
        }
    }

    fn handle_header(
        &mut self,
        context: &mut Context<'_>,
        header: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let State::ExpectStreamHeader { authenticated } = std::mem::replace(&mut self.state, State::Failed) else {
            // Invariant: the framer yields a header only at stream start or after reset.
            return Err(StreamError::new(StreamErrorCondition::InternalServerError));
        };
        let domain = check_header(context.settings, header)?;
        if let Some(first) = &self.domain {
            if *first != domain {
                return Err(StreamError::new(StreamErrorCondition::HostUnknown));
            }
        }
        self.domain = Some(domain.clone());
        self.write_header(context, Some(&domain), out);
        let settings = context.settings;
        let (features, next) = match authenticated {
            Some(user) => (Features::Bind, State::ExpectBind { user }),
            None if !self.secured && settings.tls == TlsPolicy::Required => {
                (Features::StartTlsRequired, State::ExpectStartTls)
            }
            None => {
                (Features::Sasl { starttls: !self.secured && settings.tls == TlsPolicy::Optional }, State::ExpectAuth)
            }
        };
        features.write(settings, self.secured, &self.bindings, out);
        self.state = next;
        Ok(Action::Continue)
    }

    fn write_header(&mut self, context: &mut Context<'_>, domain: Option<&str>, out: &mut Vec<u8>) {
        let mut id = [0u8; 12];
        context.entropy.fill(&mut id);
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'");
        write_attribute(out, "id", &hex(&id));
        let from = domain.or(self.domain.as_deref()).or(context.settings.hosts.first().map(String::as_str));
        if let Some(from) = from {
            write_attribute(out, "from", from);
        }
        out.extend_from_slice(b" version='1.0' xml:lang='en'>");
        self.header_sent = true;
    }

    fn handle_element(
        &mut self,
        context: &mut Context<'_>,
        element: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let text =
            std::str::from_utf8(element).map_err(|_| StreamError::new(StreamErrorCondition::UnsupportedEncoding))?;
        let document = roxmltree::Document::parse(text)
            .map_err(|e| StreamError::with_text(StreamErrorCondition::NotWellFormed, e.to_string()))?;
        let root = document.root_element();
        let namespace = root.tag_name().namespace().unwrap_or(NS_CLIENT);
        let name = root.tag_name().name();
        match std::mem::replace(&mut self.state, State::Failed) {
            State::ExpectStartTls => self.expect_starttls(namespace, name, out),
            State::ExpectAuth => self.expect_auth(context, root, namespace, name, out),
            State::ExpectInitialResponse { mechanism } => match (namespace, name) {
                (sasl::NS | sasl::NS2, "response") if self.profile_ns() == namespace => {
                    self.start_sasl(context, mechanism, root.text().unwrap_or("").as_bytes(), out)
                }
                (sasl::NS | sasl::NS2, "abort") => self.abort_sasl(context, out),
                _ => Err(not_authorized("SASL negotiation in progress")),
            },
            State::ExpectScramFinal { server, user } => match (namespace, name) {
                (sasl::NS | sasl::NS2, "response") if self.profile_ns() == namespace => {
                    self.finish_scram(context, *server, user, root.text().unwrap_or(""), out)
                }
                (sasl::NS | sasl::NS2, "abort") => self.abort_sasl(context, out),
                _ => Err(not_authorized("SASL negotiation in progress")),
            },
            State::ExpectBind { user } if namespace == crate::sm::NS_SM => {
                Ok(self.expect_bind_sm(context.settings.resumption, user, root, name, out))
            }
            State::ExpectBind { user } => self.expect_bind(user, root, namespace, name, out),
            State::ExpectStreamHeader { .. }
            | State::ExpectCredentials { .. }
            | State::ExpectPlainVerdict { .. }
            | State::ExpectRegistered { .. }
            | State::ExpectBindResult { .. }
            | State::ExpectBind2Result { .. }
            | State::ExpectFastTokens { .. }
            | State::ExpectFastToken { .. }
            | State::ExpectResumeResult { .. } => Err(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "element sent while the server was still answering",
            )),
            State::Established | State::Failed => Err(StreamError::new(StreamErrorCondition::InternalServerError)),
        }
    }

    fn expect_starttls(&mut self, namespace: &str, name: &str, out: &mut Vec<u8>) -> Result<Action, StreamError> {
        match (namespace, name) {
            (NS_TLS, "starttls") => {
                out.extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                self.state = State::ExpectStreamHeader { authenticated: None };
                self.header_sent = false;
                Ok(Action::StartTls)
            }
            (sasl::NS, "auth") => {
                // RFC 6120 section 6.5.4: recoverable; the stream stays open.
                SaslFailure::EncryptionRequired.write(out);
                self.state = State::ExpectStartTls;
                Ok(Action::Continue)
            }
            _ => Err(not_authorized("STARTTLS is required")),
        }
    }

    fn expect_auth(
        &mut self,
        context: &mut Context<'_>,
        root: roxmltree::Node<'_, '_>,
        namespace: &str,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        match (namespace, name) {
            (sasl::NS, "auth") | (sasl::NS2, "authenticate") => {
                // XEP-0388 section 2.3: SASL2 carries its extras in <authenticate/>.
                let initial = if namespace == sasl::NS2 && context.settings.sasl2 {
                    let mut request = sasl2_request(root);
                    if !context.settings.bind2 {
                        request.bind = None;
                    }
                    self.sasl2 = Some(Box::new(request));
                    root.children()
                        .find(|c| c.is_element() && c.tag_name().name() == "initial-response")
                        .and_then(|c| c.text())
                } else if namespace == sasl::NS2 {
                    return Err(not_authorized("SASL2 is not offered"));
                } else {
                    self.sasl2 = None;
                    root.text()
                };
                if root.attribute("mechanism") == Some(FAST_MECHANISM) {
                    return self.start_fast(context, initial.unwrap_or_default(), out);
                }
                let offered = features::offered_mechanisms(context.settings, self.secured, &self.bindings);
                let mechanism = root.attribute("mechanism").and_then(|m| Mechanism::from_name(m.as_bytes()));
                let Some(mechanism) = mechanism.filter(|m| offered.contains(m)) else {
                    self.state = State::ExpectAuth;
                    return self.sasl_failed(SaslFailure::InvalidMechanism, context.settings, out);
                };
                match initial {
                    None | Some("") => {
                        // No initial response: an empty challenge asks for it.
                        self.write_challenge(b"", out);
                        self.state = State::ExpectInitialResponse { mechanism };
                        Ok(Action::Continue)
                    }
                    Some(text) => self.start_sasl(context, mechanism, text.as_bytes(), out),
                }
            }
            (NS_TLS, "starttls") => {
                // Not offered here (already secured, or disabled): RFC 6120 section 5.4.2.2.
                out.extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>");
                self.state = State::Failed;
                Err(StreamError::with_text(StreamErrorCondition::PolicyViolation, "STARTTLS not offered"))
            }
            (sasl::NS | sasl::NS2, "abort") => self.abort_sasl(context, out),
            (NS_CLIENT, "iq") if context.settings.registration => self.register(root, out),
            _ => Err(not_authorized("authenticate first")),
        }
    }

    /// XEP-0077 before authentication: the form, or an account for the shell to create.
    fn register(&mut self, iq: roxmltree::Node<'_, '_>, out: &mut Vec<u8>) -> Result<Action, StreamError> {
        self.state = State::ExpectAuth;
        let Some(id) = iq.attribute("id") else { return Err(not_authorized("authenticate first")) };
        let domain = self.domain.clone().unwrap_or_default();
        match register::parse(iq, &domain) {
            register::Request::Form => register::write_form(id, out),
            register::Request::Refuse(condition) => register::write_outcome(id, Err(condition), out),
            register::Request::Create { user, password } => {
                self.state = State::ExpectRegistered { id: id.into() };
                return Ok(Action::Register { user, password });
            }
        }
        Ok(Action::Continue)
    }

    fn start_sasl(
        &mut self,
        context: &mut Context<'_>,
        mechanism: Mechanism,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let settings = context.settings;
        self.state = State::ExpectAuth;
        let message = match sasl::decode_payload(payload) {
            Ok(message) => message,
            Err(failure) => return self.sasl_failed(failure, settings, out),
        };
        let domain = self.domain.clone().unwrap_or_default();
        match mechanism {
            Mechanism::Plain => {
                let plain = match sasl::parse_plain(&message) {
                    Ok(plain) => plain,
                    Err(failure) => return self.sasl_failed(failure, settings, out),
                };
                let user = match account(&plain.authcid, &domain, plain.authzid.as_deref()) {
                    Ok(user) => user,
                    Err(failure) => return self.sasl_failed(failure, settings, out),
                };
                self.state = State::ExpectPlainVerdict { user: user.clone() };
                Ok(Action::VerifyPassword { user, password: plain.password })
            }
            _ => {
                if let Some(name) = scram::requested_binding(&message).filter(|_| mechanism.is_plus()) {
                    if !self.bindings.supports(name) {
                        // Not a password guess: the client has channel binding, just not
                        // a type we share. It is not counted as a failed attempt.
                        self.binding_unshared = true;
                        let text = format!("unsupported channel-binding type {name}");
                        self.write_failure(SaslFailure::NotAuthorized, Some(&text), out);
                        return Ok(Action::Continue);
                    }
                }
                // A `y` flag while we offer -PLUS means someone stripped -PLUS from the
                // list (a downgrade), unless this client showed it shares no type with us.
                let plus_offered = !self.binding_unshared
                    && features::offered_mechanisms(settings, self.secured, &self.bindings).iter().any(|m| m.is_plus());
                let first = match scram::parse_client_first(mechanism, &message, plus_offered, &self.bindings) {
                    Ok(first) => first,
                    Err(failure) => return self.sasl_failed(failure, settings, out),
                };
                let user = match account(&first.username, &domain, first.authzid.as_deref()) {
                    Ok(user) => user,
                    Err(failure) => return self.sasl_failed(failure, settings, out),
                };
                let hash = first.hash();
                self.state = State::ExpectCredentials { first: Box::new(first), user: user.clone() };
                Ok(Action::FetchCredentials { user, hash })
            }
        }
    }

    fn finish_scram(
        &mut self,
        context: &mut Context<'_>,
        server: ExpectClientFinal,
        user: BareJid,
        payload: &str,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        self.state = State::ExpectAuth;
        let verdict = sasl::decode_payload(payload.as_bytes()).and_then(|message| server.finish(&message));
        match verdict {
            Ok(server_final) => Ok(self.authenticated(context, user, Some(server_final), out)),
            Err(failure) => self.sasl_failed(failure, context.settings, out),
        }
    }

    fn abort_sasl(&mut self, context: &Context<'_>, out: &mut Vec<u8>) -> Result<Action, StreamError> {
        self.state = State::ExpectAuth;
        self.sasl_failed(SaslFailure::Aborted, context.settings, out)
    }

    /// Sends a SASL failure; past the attempt limit, closes with `policy-violation`
    /// (RFC 6120 section 6.4.5).
    fn sasl_failed(
        &mut self,
        failure: SaslFailure,
        settings: &C2sSettings,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        self.write_failure(failure, None, out);
        self.sasl_failures += 1;
        if self.sasl_failures >= settings.sasl_attempts_max {
            return Err(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many failed authentication attempts",
            ));
        }
        Ok(Action::Continue)
    }

    /// XEP-0484 section 3.3: `HT-SHA-256-NONE` with `<fast/>` in a SASL2
    /// `<authenticate/>` that names its user agent; the initial response is the
    /// username, a NUL, and the client's proof.
    fn start_fast(
        &mut self,
        context: &mut Context<'_>,
        initial: &str,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        self.state = State::ExpectAuth;
        let settings = context.settings;
        let request = self.sasl2.as_deref();
        let user_agent = request.filter(|r| r.fast && settings.fast.is_some()).and_then(|r| r.user_agent.clone());
        let Some(user_agent) = user_agent else {
            return self.sasl_failed(SaslFailure::InvalidMechanism, settings, out);
        };
        let message = match sasl::decode_payload(initial.as_bytes()) {
            Ok(message) => message,
            Err(failure) => return self.sasl_failed(failure, settings, out),
        };
        let Some(split) = message.iter().position(|b| *b == 0) else {
            return self.sasl_failed(SaslFailure::MalformedRequest, settings, out);
        };
        let (name, proof) = (&message[..split], &message[split + 1..]);
        let domain = self.domain.clone().unwrap_or_default();
        let user = match std::str::from_utf8(name)
            .map_err(|_| SaslFailure::MalformedRequest)
            .and_then(|name| account(name, &domain, None))
        {
            Ok(user) => user,
            Err(failure) => return self.sasl_failed(failure, settings, out),
        };
        self.state = State::ExpectFastTokens { user: user.clone(), proof: proof.to_vec() };
        Ok(Action::FetchFastTokens { user, user_agent })
    }

    /// The namespace of this exchange's SASL elements.
    fn profile_ns(&self) -> &'static str {
        if self.sasl2.is_some() {
            sasl::NS2
        } else {
            sasl::NS
        }
    }

    fn write_challenge(&self, data: &[u8], out: &mut Vec<u8>) {
        sasl::write_element_in(self.profile_ns(), "challenge", Some(data), out);
    }

    fn write_failure(&self, failure: SaslFailure, text: Option<&str>, out: &mut Vec<u8>) {
        match self.sasl2 {
            Some(_) => failure.write2(text, out),
            None => failure.write_with_text(text, out),
        }
    }

    /// Authentication succeeded. SASL: `<success/>` and a stream restart. SASL2: no
    /// restart; with a Bind 2 request the shell binds first (`<success/>` comes with
    /// `<bound/>`), without one `<success/>` names the account and a bind follows.
    fn authenticated(
        &mut self,
        context: &mut Context<'_>,
        user: BareJid,
        additional: Option<Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Action {
        let Some(mut request) = self.sasl2.take() else {
            sasl::write_element("success", additional.as_deref(), out);
            self.state = State::ExpectStreamHeader { authenticated: Some(user.clone()) };
            self.header_sent = false;
            return Action::Authenticated { user };
        };
        // XEP-0484: a token when asked for, and a new one after each FAST login
        // (rotation: the one used stays valid until the new one is).
        let wants_token =
            (request.request_token || (request.fast && request.rotate)) && context.settings.fast.is_some();
        if let (true, false, Some(user_agent)) = (wants_token, request.token_asked, request.user_agent.clone()) {
            request.token_asked = true;
            self.sasl2 = Some(request);
            self.state = State::ExpectFastToken { user: user.clone(), additional };
            return Action::IssueFastToken { user, user_agent };
        }
        let token = request.token.take();
        let Some(bind) = request.bind else {
            write_sasl2_success(additional.as_deref(), user.as_str(), token.as_deref(), None, out);
            self.state = State::ExpectBind { user };
            return Action::Continue;
        };
        let resource = bind2_resource(bind.tag.as_deref(), request.user_agent.as_deref(), &user, context.entropy);
        self.state = State::ExpectBind2Result { additional, token };
        Action::Bind2 { user, resource, inline: bind.inline }
    }

    fn expect_bind(
        &mut self,
        user: BareJid,
        root: roxmltree::Node<'_, '_>,
        namespace: &str,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<Action, StreamError> {
        let id = root.attribute("id").unwrap_or("");
        let bind = root
            .first_element_child()
            .filter(|child| child.tag_name().namespace() == Some(NS_BIND) && child.tag_name().name() == "bind");
        let is_set = root.attribute("type") == Some("set");
        let (Some(bind), true, NS_CLIENT, "iq") = (bind, is_set, namespace, name) else {
            return Err(not_authorized("bind a resource first"));
        };
        let requested = bind
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == "resource")
            .and_then(|r| r.text())
            .map(str::trim)
            .filter(|r| !r.is_empty());
        let resource = match requested.map(jid::normalise_resource) {
            None => None,
            Some(Ok(resource)) => Some(resource.into_owned()),
            Some(Err(_)) => {
                write_iq_error(id, &StanzaError::new(StanzaErrorCondition::BadRequest), out);
                self.state = State::ExpectBind { user };
                return Ok(Action::Continue);
            }
        };
        self.state = State::ExpectBindResult { id: id.into() };
        Ok(Action::Bind { user, resource })
    }

    /// XEP-0198 before a resource is bound: `<resume/>` (section 5) when resumption
    /// is on; anything else is `<failed/>` and the stream goes on.
    fn expect_bind_sm(
        &mut self,
        resumption: bool,
        user: BareJid,
        root: roxmltree::Node<'_, '_>,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Action {
        if name != "resume" || !resumption {
            // Section 3: enabling before binding is `unexpected-request`.
            let condition = if name == "resume" { "feature-not-implemented" } else { "unexpected-request" };
            crate::sm::write_failed(condition, None, out);
            self.state = State::ExpectBind { user };
            return Action::Continue;
        }
        let previd = root.attribute("previd").filter(|p| !p.is_empty() && p.len() <= 256);
        let h = root.attribute("h").and_then(|h| h.parse::<u32>().ok());
        let (Some(previd), Some(h)) = (previd, h) else {
            crate::sm::write_failed("bad-request", None, out);
            self.state = State::ExpectBind { user };
            return Action::Continue;
        };
        self.state = State::ExpectResumeResult { user: user.clone() };
        Action::Resume { user, previd: previd.to_owned(), h }
    }
}

/// The extras of a SASL2 `<authenticate/>` (XEP-0388 section 2.3, XEP-0386).
fn sasl2_request(authenticate: roxmltree::Node<'_, '_>) -> Sasl2Request {
    let mut request = Sasl2Request::default();
    for child in authenticate.children().filter(|c| c.is_element()) {
        match (child.tag_name().namespace(), child.tag_name().name()) {
            (Some(sasl::NS2), "user-agent") => {
                request.user_agent =
                    child.attribute("id").filter(|id| !id.is_empty() && id.len() <= 128).map(str::to_owned);
            }
            (Some(NS_FAST), "fast") => request.fast = true,
            (Some(NS_FAST), "request-token") => {
                request.request_token = child.attribute("mechanism") == Some(FAST_MECHANISM);
            }
            (Some(NS_BIND2), "bind") => {
                let mut bind = Bind2Request::default();
                for part in child.children().filter(|c| c.is_element()) {
                    if part.tag_name().namespace() == Some(NS_BIND2) && part.tag_name().name() == "tag" {
                        bind.tag = part.text().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
                    } else if bind.inline.len() < 16 {
                        let source = part.document().input_text();
                        if let Some(raw) = source.get(part.range()) {
                            bind.inline.push(raw.as_bytes().to_vec());
                        }
                    }
                }
                request.bind = Some(bind);
            }
            _ => {}
        }
    }
    request
}

/// XEP-0386 section 3: the resource for a Bind 2 request: the client's tag (if a
/// valid resource, at most 32 characters) and a suffix that is stable for one
/// user-agent id of one account (so a reconnecting client gets its resource back and
/// replaces its old session), random without an id.
fn bind2_resource(tag: Option<&str>, user_agent: Option<&str>, user: &BareJid, entropy: &mut dyn Entropy) -> String {
    let suffix: String = match user_agent {
        Some(id) => {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            context.update(user.as_str().as_bytes());
            context.update(b"\0");
            context.update(id.as_bytes());
            context.finish().as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect()
        }
        None => {
            let mut bytes = [0u8; 8];
            entropy.fill(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let tag =
        tag.filter(|t| t.chars().count() <= 32).and_then(|t| jid::normalise_resource(t).ok()).map(|t| t.into_owned());
    match tag {
        Some(tag) => format!("{tag}.{suffix}"),
        None => suffix,
    }
}

/// XEP-0388 section 2.6.3: `<success/>` with the SCRAM server-final message, the
/// authorization identifier, and (Bind 2) `<bound/>`.
fn write_sasl2_success(
    additional: Option<&[u8]>,
    identifier: &str,
    token: Option<&[u8]>,
    bound: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"<success xmlns='urn:xmpp:sasl:2'>");
    if let Some(additional) = additional {
        out.extend_from_slice(b"<additional-data>");
        out.extend_from_slice(sasl::encode_payload(additional).as_bytes());
        out.extend_from_slice(b"</additional-data>");
    }
    out.extend_from_slice(b"<authorization-identifier>");
    xml::escape(identifier, out);
    out.extend_from_slice(b"</authorization-identifier>");
    if let Some(token) = token {
        out.extend_from_slice(token);
    }
    if let Some(bound) = bound {
        out.extend_from_slice(b"<bound xmlns='urn:xmpp:bind:0'>");
        out.extend_from_slice(bound);
        out.extend_from_slice(b"</bound>");
    }
    out.extend_from_slice(b"</success>");
}

/// Checks a client's stream header (RFC 6120 section 4.7) and returns the domain.
fn check_header(settings: &C2sSettings, header: &[u8]) -> Result<String, StreamError> {
    let tag = xml::start_tag(&[header, b"/>"].concat()).map(|t| t.name.to_vec()).unwrap_or_default();
    let mut stream_ns = None;
    let mut default_ns = None;
    let mut to = None;
    let mut version = None;
    for attribute in xml::Attributes::of(header) {
        let value = attribute.value().map(|v| v.into_owned());
        match attribute.name {
            b"xmlns:stream" => stream_ns = value,
            b"xmlns" => default_ns = value,
            b"to" => to = value,
            b"version" => version = value,
            _ => {}
        }
    }
    if tag != b"stream:stream" {
        let condition = if tag.ends_with(b":stream") {
            StreamErrorCondition::BadNamespacePrefix
        } else {
            StreamErrorCondition::InvalidNamespace
        };
        return Err(StreamError::new(condition));
    }
    if stream_ns.as_deref() != Some(NS_STREAMS) || default_ns.as_deref() != Some(NS_CLIENT) {
        return Err(StreamError::new(StreamErrorCondition::InvalidNamespace));
    }
    let major = version.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        return Err(StreamError::with_text(StreamErrorCondition::UnsupportedVersion, "version 1.0 is required"));
    }
    let domain = to
        .as_deref()
        .and_then(|to| jid::normalise_domain(to).ok().map(|d| d.into_owned()))
        .filter(|domain| settings.hosts.iter().any(|host| host == domain));
    domain.ok_or_else(|| StreamError::new(StreamErrorCondition::HostUnknown))
}

/// The account a SASL username names on this stream's domain; an authorization
/// identity must be that same account (no proxy authorization).
fn account(username: &str, domain: &str, authzid: Option<&str>) -> Result<BareJid, SaslFailure> {
    let local = match username.rsplit_once('@') {
        Some((local, user_domain)) if jid::normalise_domain(user_domain).is_ok_and(|d| d == domain) => local,
        Some(_) => return Err(SaslFailure::NotAuthorized),
        None => username,
    };
    let user = BareJid::new(Some(local), domain).map_err(|_| SaslFailure::NotAuthorized)?;
    if let Some(authzid) = authzid {
        let same = authzid.parse::<BareJid>().is_ok_and(|z| z == user);
        if !same {
            return Err(SaslFailure::InvalidAuthzid);
        }
    }
    Ok(user)
}

fn not_authorized(text: &str) -> StreamError {
    StreamError::with_text(StreamErrorCondition::NotAuthorized, text)
}

fn write_iq_error(id: &str, error: &StanzaError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='error'");
    write_attribute(out, "id", id);
    out.push(b'>');
    error.write(out);
    out.extend_from_slice(b"</iq>");
}

/// A printable SCRAM nonce part from 18 random bytes.
fn nonce(entropy: &mut dyn Entropy) -> String {
    let mut bytes = [0u8; 18];
    entropy.fill(&mut bytes);
    sasl::encode_payload(&bytes).replace(',', "-")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
