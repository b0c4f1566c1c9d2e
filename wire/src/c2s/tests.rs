use super::*;
use crate::framer::Framer;
use crate::limits::FramerLimits;
use crate::sasl::scram::{salted_password, ScramClient};

struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='LocalHost' version='1.0'>";

/// Drives a `C2s` the way the shell does, with an in-memory account table.
struct Harness {
    framer: Framer,
    c2s: C2s,
    settings: C2sSettings,
    entropy: Counter,
    out: Vec<u8>,
    password: &'static str,
}

impl Harness {
    fn new(settings: C2sSettings) -> Harness {
        Harness {
            framer: Framer::new(FramerLimits::for_tests()),
            c2s: C2s::new(false),
            settings,
            entropy: Counter(0),
            out: Vec::new(),
            password: "secret",
        }
    }

    /// Feeds `text`; answers credential and password actions like a store holding
    /// `alice` with `self.password`; returns the other actions.
    fn send(&mut self, text: &str) -> Result<Vec<Action>, StreamError> {
        let mut input = text.as_bytes();
        let mut actions = Vec::new();
        loop {
            let frame = match self.framer.next(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(actions),
                Err(error) => {
                    let mut context = Context { settings: &self.settings, entropy: &mut self.entropy };
                    return Err(self.c2s.fail(&mut context, error.into(), &mut self.out));
                }
            };
            let mut context = Context { settings: &self.settings, entropy: &mut self.entropy };
            let mut action = self.c2s.handle_frame(&mut context, frame, &mut self.out)?;
            if let Action::VerifyPassword { user, password } = &action {
                let correct = user.local() == Some("alice") && password == self.password;
                action = self.c2s.handle_password_verdict(&mut context, correct, &mut self.out)?;
            }
            match action {
                Action::FetchCredentials { user, hash } => {
                    let credentials = (user.local() == Some("alice")).then(|| {
                        Credentials::derive(hash, self.password, b"saltsaltsaltsalt", NonZeroU32::new(16).unwrap())
                    });
                    self.c2s.handle_credentials(&mut context, credentials, &mut self.out);
                }
                Action::Authenticated { .. } => {
                    self.framer.reset();
                    actions.push(action);
                }
                Action::Continue => {}
                other => actions.push(other),
            }
        }
    }

    fn output(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.out)).unwrap()
    }

    /// Starts SCRAM-SHA-256 as `user`; returns the server-first message.
    fn scram_server_first(&mut self, user: &str) -> String {
        let (_, first) = ScramClient::new(scram::Hash::Sha256, user, "clientnonce", None);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            sasl::encode_payload(&first)
        ))
        .unwrap();
        let challenge = self.output();
        let payload = challenge.split('>').nth(1).unwrap().split('<').next().unwrap();
        String::from_utf8(sasl::decode_payload(payload.as_bytes()).unwrap()).unwrap()
    }

    /// Runs SCRAM with our client; returns the server's final answer element.
    fn scram_login(&mut self, mechanism: Mechanism, user: &str, password: &str) -> Result<String, StreamError> {
        let hash = mechanism.scram_hash().unwrap();
        let (client, first) = ScramClient::new(hash, user, "clientnonce", None);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            mechanism.name(),
            sasl::encode_payload(&first)
        ))?;
        let challenge = self.output();
        let payload = challenge.split('>').nth(1).unwrap().split('<').next().unwrap();
        let server_first = sasl::decode_payload(payload.as_bytes()).unwrap();
        let (_, final_message) =
            client.respond(&server_first, |salt, i| salted_password(hash, password, salt, i)).unwrap();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            sasl::encode_payload(&final_message)
        ))?;
        Ok(self.output())
    }
}

fn plain(user: &str, password: &str) -> String {
    let message = format!("\0{user}\0{password}");
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        sasl::encode_payload(message.as_bytes())
    )
}

/// A whole login: header, SCRAM-SHA-256, restart, bind with a server-chosen resource.
#[test]
fn scram_login_binds_a_resource() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    let features = h.output();
    assert!(features.contains("from='localhost'"), "{features}");
    assert!(features.contains("<mechanism>SCRAM-SHA-256</mechanism>"));
    assert!(!features.contains("PLUS"), "no -PLUS without TLS: {features}");
    let success = h.scram_login(Mechanism::ScramSha256, "Alice", "secret").unwrap();
    assert!(success.starts_with("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"), "{success}");
    let actions = h.send(HEADER).unwrap();
    assert!(actions.is_empty(), "{actions:?}");
    assert!(h.output().contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"));
    let actions = h.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").unwrap();
    let user: BareJid = "alice@localhost".parse().unwrap();
    assert_eq!(actions, vec![Action::Bind { user: user.clone(), resource: None }]);
    h.c2s.handle_bound(&user.with_resource("abc").unwrap(), b"", &mut h.out);
    assert_eq!(h.output(), "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@localhost/abc</jid></bind></iq>");
    assert!(h.c2s.is_established());
}

/// PLAIN: wrong passwords get not-authorized; the third failure closes the stream with
/// policy-violation (RFC 6120 section 6.4.5).
#[test]
fn three_failed_logins_close_the_stream() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    for _ in 0..2 {
        h.send(&plain("alice", "wrong")).unwrap();
        assert_eq!(h.output(), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
    }
    let error = h.send(&plain("nobody", "secret")).unwrap_err();
    assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
    let out = h.output();
    assert!(out.starts_with("<failure"), "{out}");
    assert!(out.ends_with("</stream:error></stream:stream>"), "{out}");
}

/// PLAIN with the right password succeeds, and the account is case-insensitive.
#[test]
fn plain_login_succeeds() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    let actions = h.send(&plain("ALICE", "secret")).unwrap();
    assert_eq!(actions, vec![Action::Authenticated { user: "alice@localhost".parse().unwrap() }]);
    assert_eq!(h.output(), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
}

/// An unknown user gets a normal-looking challenge (stable decoy salt) and fails at
/// the proof exactly like a wrong password.
#[test]
fn unknown_user_fails_like_a_wrong_password() {
    let mut salts = Vec::new();
    for _ in 0..2 {
        let mut h = Harness::new(C2sSettings::for_tests());
        h.send(HEADER).unwrap();
        h.output();
        let server_first = h.scram_server_first("ghost");
        salts.push(server_first.split(',').nth(1).unwrap().to_owned());
    }
    assert_eq!(salts[0], salts[1]);
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    let failure = h.scram_login(Mechanism::ScramSha256, "ghost", "secret").unwrap();
    assert_eq!(failure, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
}

/// With TLS required, only STARTTLS is offered; SASL first gets encryption-required;
/// a stanza closes the stream with not-authorized; STARTTLS gets proceed.
#[test]
fn starttls_is_required_first() {
    let mut settings = C2sSettings::for_tests();
    settings.tls = TlsPolicy::Required;
    let mut h = Harness::new(settings);
    h.send(HEADER).unwrap();
    let features = h.output();
    assert!(features.ends_with("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"), "{features}");
    h.send(&plain("alice", "secret")).unwrap();
    assert_eq!(h.output(), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>");
    assert_eq!(h.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").unwrap(), vec![Action::StartTls]);
    assert_eq!(h.output(), "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    // After the handshake the stream restarts and SASL (with -PLUS) is offered.
    h.framer.reset();
    h.c2s.handle_tls_established(ChannelBindings { tls_exporter: Some([1; 32]), tls_server_end_point: None });
    h.send(HEADER).unwrap();
    let features = h.output();
    assert!(features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"), "{features}");
    assert!(features.contains("<mechanism>PLAIN</mechanism>"));
    assert!(features.contains("<channel-binding type='tls-exporter'/>"));
    assert!(!features.contains("starttls"));

    let mut h = Harness::new(C2sSettings { tls: TlsPolicy::Required, ..C2sSettings::for_tests() });
    h.send(HEADER).unwrap();
    let error = h.send("<message to='bob@localhost'><body>x</body></message>").unwrap_err();
    assert_eq!(error.condition, StreamErrorCondition::NotAuthorized);
}

/// Header errors get the right condition, after our own header.
#[test]
fn bad_headers_get_stream_errors() {
    let cases = [
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>", StreamErrorCondition::HostUnknown),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>", StreamErrorCondition::HostUnknown),
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>", StreamErrorCondition::InvalidNamespace),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>", StreamErrorCondition::InvalidNamespace),
        ("<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' to='localhost' version='1.0'>", StreamErrorCondition::BadNamespacePrefix),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>", StreamErrorCondition::UnsupportedVersion),
    ];
    for (header, condition) in cases {
        let mut h = Harness::new(C2sSettings::for_tests());
        let error = h.send(header).unwrap_err();
        assert_eq!(error.condition, condition, "{header}");
        let out = h.output();
        assert!(out.starts_with("<?xml version='1.0'?><stream:stream"), "{out}");
        assert!(out.contains(&format!("<{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", condition.name())));
    }
}

/// Stanzas before authentication or before binding close the stream.
#[test]
fn stanzas_before_auth_or_bind_are_refused() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    let error = h.send("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>").unwrap_err();
    assert_eq!(error.condition, StreamErrorCondition::NotAuthorized);

    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.send(&plain("alice", "secret")).unwrap();
    h.send(HEADER).unwrap();
    let error = h.send("<message to='bob@localhost'><body>x</body></message>").unwrap_err();
    assert_eq!(error.condition, StreamErrorCondition::NotAuthorized);
}

/// An invalid resource gets bad-request and the client may try again.
#[test]
fn bad_resource_gets_bad_request() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.send(&plain("alice", "secret")).unwrap();
    h.send(HEADER).unwrap();
    h.output();
    let long = "r".repeat(1100);
    let actions = h.send(&format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{long}</resource></bind></iq>")).unwrap();
    assert!(actions.is_empty(), "{actions:?}");
    assert!(h.output().contains("<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"));
    let actions = h.send("<iq type='set' id='c'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource> phone </resource></bind></iq>").unwrap();
    assert_eq!(
        actions,
        vec![Action::Bind { user: "alice@localhost".parse().unwrap(), resource: Some("phone".into()) }]
    );
}

/// An authorization identity other than the account itself is refused.
#[test]
fn foreign_authzid_is_refused() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    let message = "bob@localhost\0alice\0secret";
    h.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        sasl::encode_payload(message.as_bytes())
    ))
    .unwrap();
    assert_eq!(h.output(), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>");
}

/// A mechanism we do not offer is invalid-mechanism.
#[test]
fn unknown_mechanism_is_refused() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    h.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>").unwrap();
    assert_eq!(h.output(), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>");
}

/// SCRAM without an initial response gets an empty challenge first.
#[test]
fn auth_without_initial_response_gets_empty_challenge() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    h.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>").unwrap();
    assert_eq!(h.output(), "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</challenge>");
    let message = sasl::encode_payload(b"\0alice\0secret");
    let actions = h.send(&format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{message}</response>")).unwrap();
    assert_eq!(actions.len(), 1);
}

/// The negotiation state stays small; it is dropped once the session is established.
#[test]
fn c2s_size_budget() {
    assert!(std::mem::size_of::<C2s>() <= 160, "{}", std::mem::size_of::<C2s>());
}

/// A database outage during login is a temporary failure that does not count
/// towards the attempt limit.
#[test]
fn store_failure_is_temporary_and_not_counted() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    h.output();
    for _ in 0..5 {
        let mut input = plain("alice", "secret");
        let mut bytes = input.as_bytes();
        let frame = h.framer.next(&mut bytes).unwrap().unwrap();
        let mut context = Context { settings: &h.settings, entropy: &mut h.entropy };
        let action = h.c2s.handle_frame(&mut context, frame, &mut h.out).unwrap();
        assert!(matches!(action, Action::VerifyPassword { .. }));
        h.c2s.handle_store_failure(&mut h.out);
        assert_eq!(h.output(), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/></failure>");
        input.clear();
    }
    assert_eq!(h.send(&plain("alice", "secret")).unwrap().len(), 1);
}

impl Harness {
    /// A harness for a direct-TLS stream whose connection offers `tls-exporter`.
    fn secured() -> Harness {
        let mut h = Harness::new(C2sSettings::for_tests());
        h.c2s = C2s::new(true);
        h.c2s.handle_tls_established(ChannelBindings { tls_exporter: Some([1; 32]), tls_server_end_point: None });
        h.send(HEADER).unwrap();
        let features = h.output();
        assert!(features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"), "{features}");
        h
    }

    /// Sends `<auth/>` with a client-first message written by hand.
    fn auth_raw(&mut self, mechanism: Mechanism, client_first: &str) -> Result<String, StreamError> {
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            mechanism.name(),
            sasl::encode_payload(client_first.as_bytes())
        ))?;
        Ok(self.output())
    }

    /// Runs SCRAM-SHA-256 with the gs2 flag `y`; returns the server's final answer.
    fn scram_login_flag_y(&mut self, password: &str) -> Result<String, StreamError> {
        let (client, first) = ScramClient::new_flag_y(scram::Hash::Sha256, "alice", "clientnonce");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            sasl::encode_payload(&first)
        ))?;
        let challenge = self.output();
        if !challenge.starts_with("<challenge") {
            return Ok(challenge);
        }
        let payload = challenge.split('>').nth(1).unwrap().split('<').next().unwrap();
        let server_first = sasl::decode_payload(payload.as_bytes()).unwrap();
        let (_, final_message) =
            client.respond(&server_first, |salt, i| salted_password(scram::Hash::Sha256, password, salt, i)).unwrap();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            sasl::encode_payload(&final_message)
        ))?;
        Ok(self.output())
    }
}

/// Regression (issue 9, found with Debian 12's python3-slixmpp 1.8.3): a client that
/// tries SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS with `tls-unique` (undefined over
/// TLS 1.3), then SCRAM-SHA-256 with the `y` flag, logs in: the unsupported binding
/// type is not a failed attempt, and after it `y` is not a downgrade.
#[test]
fn unshared_channel_binding_type_then_flag_y_logs_in() {
    let mut h = Harness::secured();
    for mechanism in [Mechanism::ScramSha256Plus, Mechanism::ScramSha1Plus, Mechanism::ScramSha256Plus] {
        let answer = h.auth_raw(mechanism, "p=tls-unique,,n=alice,r=abcdef").unwrap();
        assert!(answer.contains("<not-authorized/>"), "{answer}");
        assert!(answer.contains("unsupported channel-binding type tls-unique"), "{answer}");
    }
    let answer = h.scram_login_flag_y("secret").unwrap();
    assert!(answer.starts_with("<success"), "{answer}");
}

/// A `y` flag from a client that never tried a `-PLUS` mechanism, while we offer one,
/// is a downgrade (RFC 5802 section 6) and fails; so does a wrong proof after an
/// unshared binding type, which counts as a failed attempt.
#[test]
fn flag_y_without_unshared_binding_is_a_downgrade() {
    let mut h = Harness::secured();
    let answer = h.scram_login_flag_y("secret").unwrap();
    assert_eq!(answer, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");

    let mut h = Harness::secured();
    h.auth_raw(Mechanism::ScramSha256Plus, "p=tls-unique,,n=alice,r=abcdef").unwrap();
    let answer = h.scram_login_flag_y("wrong").unwrap();
    assert!(answer.contains("<not-authorized/>"), "{answer}");
    // Two more wrong passwords reach the limit of three: unshared types did not count.
    h.scram_login_flag_y("wrong").unwrap();
    let error = h.scram_login_flag_y("wrong").unwrap_err();
    assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
}

/// A supported binding type (`tls-exporter`) still binds: a wrong binding fails.
#[test]
fn supported_binding_type_still_checked() {
    let mut h = Harness::secured();
    let (client, first) = ScramClient::new(scram::Hash::Sha256, "alice", "nonce1", Some(("tls-exporter", &[2; 32])));
    h.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{}</auth>",
        sasl::encode_payload(&first)
    ))
    .unwrap();
    let challenge = h.output();
    let payload = challenge.split('>').nth(1).unwrap().split('<').next().unwrap();
    let server_first = sasl::decode_payload(payload.as_bytes()).unwrap();
    let (_, final_message) =
        client.respond(&server_first, |salt, i| salted_password(scram::Hash::Sha256, "secret", salt, i)).unwrap();
    h.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        sasl::encode_payload(&final_message)
    ))
    .unwrap();
    assert!(h.output().contains("<not-authorized/>"), "a wrong tls-exporter binding must fail");
}

/// XEP-0198 section 5: `<resume/>` in place of a bind asks the shell to resume; a
/// failed resumption is `item-not-found` and the client may bind after it. Without
/// resumption, and for `<enable/>` before binding, `<failed/>` and the stream goes on.
#[test]
fn resume_in_place_of_bind() {
    let settings = C2sSettings { resumption: true, ..C2sSettings::for_tests() };
    let mut h = Harness::new(settings);
    h.send(HEADER).unwrap();
    h.send(&plain("alice", "secret")).unwrap();
    h.send(HEADER).unwrap();
    h.output();
    let alice: BareJid = "alice@localhost".parse().unwrap();
    let actions = h.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").unwrap();
    assert!(actions.is_empty());
    assert!(h.output().contains("<unexpected-request "));
    assert!(h.send("<resume xmlns='urn:xmpp:sm:3' h='x' previd='p'/>").unwrap().is_empty());
    assert!(h.output().contains("<bad-request "));
    let actions = h.send("<resume xmlns='urn:xmpp:sm:3' h='4' previd='abc'/>").unwrap();
    assert_eq!(actions, vec![Action::Resume { user: alice.clone(), previd: "abc".into(), h: 4 }]);
    h.c2s.handle_resume_failed(&mut h.out);
    assert!(h.output().contains("<failed xmlns='urn:xmpp:sm:3'><item-not-found "));
    let actions = h.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").unwrap();
    assert_eq!(actions, vec![Action::Bind { user: alice, resource: None }]);

    let mut off = Harness::new(C2sSettings::for_tests());
    off.send(HEADER).unwrap();
    off.send(&plain("alice", "secret")).unwrap();
    off.send(HEADER).unwrap();
    off.output();
    assert!(off.send("<resume xmlns='urn:xmpp:sm:3' h='4' previd='abc'/>").unwrap().is_empty());
    assert!(off.output().contains("<feature-not-implemented "));
}

/// XEP-0388 and XEP-0386: SASL2 is offered with Bind 2's inline features; an
/// `<authenticate/>` with PLAIN and a Bind 2 request asks the shell to bind a
/// resource made of the tag and a suffix stable for the user-agent id, with the
/// inline elements; `<success/>` (no stream restart) carries `<bound/>`. A wrong
/// password is a SASL2 failure; without `<bind/>`, success names the bare JID and a
/// legacy bind follows on the same stream.
#[test]
fn sasl2_with_bind2() {
    let settings = C2sSettings { bind2_inline: vec!["urn:xmpp:carbons:2".into()], ..C2sSettings::for_tests() };
    let mut h = Harness::new(settings);
    h.send(HEADER).unwrap();
    let features = h.output();
    assert!(features.contains("<authentication xmlns='urn:xmpp:sasl:2'><mechanism>"), "{features}");
    assert!(features.contains("<feature var='urn:xmpp:carbons:2'/>"), "{features}");
    let authenticate = |password: &str, bind: &str| {
        format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>t</software></user-agent>{bind}</authenticate>",
            sasl::encode_payload(format!("\0alice\0{password}").as_bytes())
        )
    };
    let bind = "<bind xmlns='urn:xmpp:bind:0'><tag>phone</tag><enable xmlns='urn:xmpp:carbons:2'/></bind>";
    assert!(h.send(&authenticate("wrong", bind)).unwrap().is_empty());
    let failure = h.output();
    assert!(failure.starts_with("<failure xmlns='urn:xmpp:sasl:2'><not-authorized "), "{failure}");
    let actions = h.send(&authenticate("secret", bind)).unwrap();
    let [Action::Bind2 { user, resource, inline }] = &actions[..] else { panic!("{actions:?}") };
    assert_eq!(user.as_str(), "alice@localhost");
    assert!(resource.starts_with("phone.") && resource.len() == "phone.".len() + 16, "{resource}");
    assert_eq!(inline, &vec![b"<enable xmlns='urn:xmpp:carbons:2'/>".to_vec()]);
    let jid: FullJid = format!("alice@localhost/{resource}").parse().unwrap();
    h.c2s.handle_bound(&jid, b"<x/>", &mut h.out);
    let success = h.output();
    assert!(success.starts_with("<success xmlns='urn:xmpp:sasl:2'>"), "{success}");
    assert!(success.contains(&format!("<authorization-identifier>{jid}</authorization-identifier>")), "{success}");
    assert!(success.ends_with("<bound xmlns='urn:xmpp:bind:0'><x/></bound></success>"), "{success}");

    // The same user-agent id gets the same resource; without <bind/>, a legacy bind.
    let mut again = Harness::new(C2sSettings::for_tests());
    again.send(HEADER).unwrap();
    again.output();
    let actions = again.send(&authenticate("secret", bind)).unwrap();
    assert!(matches!(&actions[..], [Action::Bind2 { resource: r, .. }] if r == resource));
    let mut plain = Harness::new(C2sSettings::for_tests());
    plain.send(HEADER).unwrap();
    plain.output();
    assert!(plain.send(&authenticate("secret", "")).unwrap().is_empty());
    let success = plain.output();
    assert!(success.contains("<authorization-identifier>alice@localhost</authorization-identifier>"), "{success}");
    let actions = plain.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").unwrap();
    assert!(matches!(&actions[..], [Action::Bind { .. }]), "{actions:?}");
}

/// XEP-0474: server-first carries the hash of the mechanisms this stream advertised
/// (no XEP-0440 list without TLS), so a client can tell they were not tampered with.
#[test]
fn server_first_carries_the_downgrade_hash() {
    let mut h = Harness::new(C2sSettings::for_tests());
    h.send(HEADER).unwrap();
    let features = h.output();
    let mechanisms: Vec<&str> = features
        .split("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
        .nth(1)
        .and_then(|rest| rest.split("</mechanisms>").next())
        .unwrap()
        .split("<mechanism>")
        .filter_map(|m| m.split("</mechanism>").next().filter(|m| !m.is_empty()))
        .collect();
    assert!(mechanisms.contains(&"SCRAM-SHA-256"), "{features}");
    let server_first = h.scram_server_first("alice");
    let expected = scram::downgrade_hash(scram::Hash::Sha256, &mechanisms, None);
    assert!(server_first.ends_with(&format!(",h={expected}")), "{server_first}");
}
