//! SCRAM (RFC 5802) with SHA-1 and SHA-256 (RFC 7677), server and client side, with
//! channel binding `tls-exporter` (RFC 9266) and `tls-server-end-point` (RFC 5929).
//!
//! Server flow, as the c2s state machine drives it:
//! ```text
//! parse_client_first(..) -> ClientFirst --(credentials looked up off-core)-->
//! ClientFirst::challenge(creds, nonce) -> (ExpectClientFinal, server-first) -->
//! ExpectClientFinal::finish(client-final) -> server-final (v=...) or failure
//! ```
//! Only salt, iteration count, StoredKey and ServerKey are ever stored. An unknown user
//! gets [`Credentials::decoy`]: a salt derived from a server secret, so probing shows
//! the same salt every time and the exchange fails only at the proof, like a wrong
//! password.

use std::num::NonZeroU32;

use base64::Engine as _;
use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use ring::{digest, hmac, pbkdf2};

use super::{constant_time_eq, Mechanism, SaslFailure};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The hash function of a SCRAM variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    pub fn output_bytes(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &digest::SHA256,
        }
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data).as_ref().to_vec()
    }
}

/// Normalises a password with PRECIS OpaqueString (the successor of SASLprep that
/// RFC 7622-era servers use); a password the profile refuses is used as given.
pub fn normalise_password(password: &str) -> std::borrow::Cow<'_, str> {
    if password.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return std::borrow::Cow::Borrowed(password);
    }
    OpaqueString::enforce(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

/// `Hi(Normalize(password), salt, i)`: the expensive PBKDF2 step.
pub fn salted_password(hash: Hash, password: &str, salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
    let mut out = vec![0u8; hash.output_bytes()];
    pbkdf2::derive(hash.pbkdf2(), iterations, salt, normalise_password(password).as_bytes(), &mut out);
    out
}

/// What the server stores for one user and one hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub hash: Hash,
    pub salt: Vec<u8>,
    pub iterations: NonZeroU32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credentials {
    /// Derives the stored keys from a password (runs PBKDF2: call off the cores).
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: NonZeroU32) -> Credentials {
        let salted = salted_password(hash, password, salt, iterations);
        Credentials::from_salted_password(hash, &salted, salt, iterations)
    }

    /// Derives the stored keys from an already salted password (cheap).
    pub fn from_salted_password(hash: Hash, salted: &[u8], salt: &[u8], iterations: NonZeroU32) -> Credentials {
        let client_key = hash.mac(salted, b"Client Key");
        Credentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(hash.digest(), &client_key).as_ref().to_vec(),
            server_key: hash.mac(salted, b"Server Key"),
        }
    }

    /// Whether `password` matches (PLAIN against stored SCRAM keys; runs PBKDF2).
    pub fn verify_password(&self, password: &str) -> bool {
        let candidate = Credentials::derive(self.hash, password, &self.salt, self.iterations);
        constant_time_eq(&candidate.stored_key, &self.stored_key)
    }

    /// Credentials for a user that does not exist: deterministic per user and server
    /// secret, and never matching any proof.
    pub fn decoy(hash: Hash, username: &str, secret: &[u8], iterations: NonZeroU32) -> Credentials {
        let mac = |label: &str| Hash::Sha256.mac(secret, format!("{label}\0{username}").as_bytes());
        Credentials {
            hash,
            salt: mac("salt")[..16].to_vec(),
            iterations,
            stored_key: mac("stored")[..hash.output_bytes()].to_vec(),
            server_key: mac("server")[..hash.output_bytes()].to_vec(),
        }
    }
}

/// Channel-binding data of the TLS connection under this stream, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    /// RFC 9266 exporter output (TLS 1.3 only).
    pub tls_exporter: Option<[u8; 32]>,
    /// RFC 5929 hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }

    /// Whether this connection can bind to the channel-binding type `name`.
    pub fn supports(&self, name: &str) -> bool {
        self.data(name).is_some()
    }

    fn data(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.tls_exporter.as_ref().map(|d| &d[..]),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }
}

/// The channel-binding type a client-first message asks for (`p=<type>`), if any.
/// Used to tell "we do not share a binding type" (RFC 5802 section 6: the client is
/// not guessing a password) from a failed proof.
pub fn requested_binding(message: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(message).ok()?;
    let (flag, _) = text.split_once(',')?;
    flag.strip_prefix("p=")
}

/// A parsed client-first message, waiting for the user's credentials.
#[derive(Debug)]
pub struct ClientFirst {
    /// The username as sent (saslname decoded, not yet normalised).
    pub username: String,
    pub authzid: Option<String>,
    hash: Hash,
    /// `gs2-header || cbind-data`, what `c=` must decode to.
    expected_binding: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
}

/// Server state after sending server-first.
#[derive(Debug)]
pub struct ExpectClientFinal {
    hash: Hash,
    expected_binding: Vec<u8>,
    nonce: String,
    /// `client-first-bare "," server-first`
    auth_message_prefix: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Parses client-first for `mechanism`. `bindings` is what this connection can bind
/// to; `plus_offered` says whether we advertised any `-PLUS` mechanism (a client that
/// says "y" then is being downgraded, RFC 5802 section 6).
pub fn parse_client_first(
    mechanism: Mechanism,
    message: &[u8],
    plus_offered: bool,
    bindings: &ChannelBindings,
) -> Result<ClientFirst, SaslFailure> {
    let hash = mechanism.scram_hash().ok_or(SaslFailure::InvalidMechanism)?;
    let text = std::str::from_utf8(message).map_err(|_| SaslFailure::MalformedRequest)?;
    let (flag, rest) = text.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let (authzid_field, bare) = rest.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let gs2_header = &text[..flag.len() + authzid_field.len() + 2];
    let mut expected_binding = gs2_header.as_bytes().to_vec();
    match (flag, mechanism.is_plus()) {
        ("n", false) => {}
        ("y", false) if !plus_offered => {}
        ("y", false) => return Err(SaslFailure::NotAuthorized),
        (flag, true) => {
            let name = flag.strip_prefix("p=").ok_or(SaslFailure::MalformedRequest)?;
            let data = bindings.data(name).ok_or(SaslFailure::NotAuthorized)?;
            expected_binding.extend_from_slice(data);
        }
        _ => return Err(SaslFailure::MalformedRequest),
    }
    let authzid = match authzid_field {
        "" => None,
        field => Some(decode_saslname(field.strip_prefix("a=").ok_or(SaslFailure::MalformedRequest)?)?),
    };
    let mut fields = bare.split(',');
    let username = fields.next().and_then(|f| f.strip_prefix("n=")).ok_or(SaslFailure::MalformedRequest)?;
    let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(SaslFailure::MalformedRequest)?;
    if bare.starts_with("m=") || username.is_empty() || nonce.is_empty() || !is_printable(nonce) {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok(ClientFirst {
        username: decode_saslname(username)?,
        authzid,
        hash,
        expected_binding,
        client_first_bare: bare.to_owned(),
        client_nonce: nonce.to_owned(),
    })
}

/// XEP-0474 section 5.1 (SSDP): the hash of the advertised SASL `mechanisms` and,
/// when XEP-0440 advertised them, `channel_bindings`, each list sorted by octets and
/// joined by 0x1E, the lists joined by 0x1F; hashed with the SCRAM mechanism's hash,
/// base64.
pub fn downgrade_hash(hash: Hash, mechanisms: &[&str], channel_bindings: Option<&[&str]>) -> String {
    let join = |list: &[&str]| {
        let mut sorted = list.to_vec();
        sorted.sort_unstable();
        sorted.join("\u{1e}")
    };
    let mut text = join(mechanisms);
    if let Some(types) = channel_bindings {
        text.push('\u{1f}');
        text.push_str(&join(types));
    }
    B64.encode(digest::digest(hash.digest(), text.as_bytes()))
}

impl ClientFirst {
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Builds server-first from the user's credentials (or a decoy) and our nonce part;
    /// `downgrade`: XEP-0474's `h` attribute ([`downgrade_hash`]), appended as an
    /// extension (RFC 5802 section 7) and so covered by both proofs.
    pub fn challenge(
        self,
        credentials: &Credentials,
        server_nonce: &str,
        downgrade: Option<&str>,
    ) -> (ExpectClientFinal, Vec<u8>) {
        assert_eq!(credentials.hash, self.hash, "credentials for the wrong hash");
        assert!(is_printable(server_nonce) && !server_nonce.is_empty(), "nonce must be printable");
        let nonce = format!("{}{server_nonce}", self.client_nonce);
        let mut server_first = format!("r={nonce},s={},i={}", B64.encode(&credentials.salt), credentials.iterations);
        if let Some(downgrade) = downgrade {
            server_first.push_str(",h=");
            server_first.push_str(downgrade);
        }
        let state = ExpectClientFinal {
            hash: self.hash,
            expected_binding: self.expected_binding,
            nonce,
            auth_message_prefix: format!("{},{server_first}", self.client_first_bare),
            stored_key: credentials.stored_key.clone(),
            server_key: credentials.server_key.clone(),
        };
        (state, server_first.into_bytes())
    }
}

impl ExpectClientFinal {
    /// Checks client-final; on success returns server-final (`v=ServerSignature`).
    pub fn finish(self, message: &[u8]) -> Result<Vec<u8>, SaslFailure> {
        let text = std::str::from_utf8(message).map_err(|_| SaslFailure::MalformedRequest)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslFailure::MalformedRequest)?;
        let mut fields = without_proof.split(',');
        let binding = fields.next().and_then(|f| f.strip_prefix("c=")).ok_or(SaslFailure::MalformedRequest)?;
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(SaslFailure::MalformedRequest)?;
        let binding = B64.decode(binding).map_err(|_| SaslFailure::IncorrectEncoding)?;
        let proof = B64.decode(proof).map_err(|_| SaslFailure::IncorrectEncoding)?;
        if !constant_time_eq(&binding, &self.expected_binding) || nonce != self.nonce {
            return Err(SaslFailure::NotAuthorized);
        }
        if proof.len() != self.hash.output_bytes() {
            return Err(SaslFailure::NotAuthorized);
        }
        let auth_message = format!("{},{without_proof}", self.auth_message_prefix);
        let signature = self.hash.mac(&self.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let candidate = digest::digest(self.hash.digest(), &client_key);
        if !constant_time_eq(candidate.as_ref(), &self.stored_key) {
            return Err(SaslFailure::NotAuthorized);
        }
        let server_signature = self.hash.mac(&self.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The client side, used by the load generator and tests.
#[derive(Debug)]
pub struct ScramClient {
    hash: Hash,
    /// `gs2-header || cbind-data`, sent base64 in `c=`.
    binding: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
}

/// Client state after sending client-final: the signature the server must prove.
#[derive(Debug)]
pub struct ExpectServerFinal {
    server_signature: Vec<u8>,
}

impl ScramClient {
    /// Starts an exchange; returns the client and client-first. `binding` is
    /// `(type name, data)` for a `-PLUS` mechanism.
    pub fn new(
        hash: Hash,
        username: &str,
        client_nonce: &str,
        binding: Option<(&str, &[u8])>,
    ) -> (ScramClient, Vec<u8>) {
        let gs2_header = match binding {
            Some((name, _)) => format!("p={name},,"),
            None => "n,,".to_owned(),
        };
        let client_first_bare = format!("n={},r={client_nonce}", encode_saslname(username));
        let mut bytes = gs2_header.clone().into_bytes();
        if let Some((_, data)) = binding {
            bytes.extend_from_slice(data);
        }
        let first = format!("{gs2_header}{client_first_bare}").into_bytes();
        (ScramClient { hash, binding: bytes, client_first_bare, client_nonce: client_nonce.to_owned() }, first)
    }

    /// Starts an exchange with the gs2 flag `y` (RFC 5802 section 6: the client
    /// supports channel binding but thinks the server does not), as older clients do
    /// after a `-PLUS` attempt failed.
    pub fn new_flag_y(hash: Hash, username: &str, client_nonce: &str) -> (ScramClient, Vec<u8>) {
        let client_first_bare = format!("n={},r={client_nonce}", encode_saslname(username));
        let first = format!("y,,{client_first_bare}").into_bytes();
        (
            ScramClient { hash, binding: b"y,,".to_vec(), client_first_bare, client_nonce: client_nonce.to_owned() },
            first,
        )
    }

    /// Answers server-first. `salted` computes (or looks up in a cache) the salted
    /// password for the given salt and iteration count.
    pub fn respond(
        self,
        server_first: &[u8],
        salted: impl FnOnce(&[u8], NonZeroU32) -> Vec<u8>,
    ) -> Result<(ExpectServerFinal, Vec<u8>), SaslFailure> {
        let text = std::str::from_utf8(server_first).map_err(|_| SaslFailure::MalformedRequest)?;
        let mut fields = text.split(',');
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(SaslFailure::MalformedRequest)?;
        let salt = fields.next().and_then(|f| f.strip_prefix("s=")).ok_or(SaslFailure::MalformedRequest)?;
        let iterations = fields.next().and_then(|f| f.strip_prefix("i=")).ok_or(SaslFailure::MalformedRequest)?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(SaslFailure::NotAuthorized);
        }
        let salt = B64.decode(salt).map_err(|_| SaslFailure::IncorrectEncoding)?;
        let iterations: NonZeroU32 = iterations.parse().map_err(|_| SaslFailure::MalformedRequest)?;
        let salted = salted(&salt, iterations);
        let keys = Credentials::from_salted_password(self.hash, &salted, &salt, iterations);
        let without_proof = format!("c={},r={nonce}", B64.encode(&self.binding));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let client_key = self.hash.mac(&salted, b"Client Key");
        let signature = self.hash.mac(&keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let server_signature = self.hash.mac(&keys.server_key, auth_message.as_bytes());
        let message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((ExpectServerFinal { server_signature }, message))
    }
}

impl ExpectServerFinal {
    /// Whether server-final proves the server knew our credentials.
    pub fn verify(&self, server_final: &[u8]) -> bool {
        let Some(signature) = server_final.strip_prefix(b"v=") else {
            return false;
        };
        B64.decode(signature).is_ok_and(|s| constant_time_eq(&s, &self.server_signature))
    }
}

fn is_printable(text: &str) -> bool {
    text.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

/// RFC 5802 saslname: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(name: &str) -> Result<String, SaslFailure> {
    if !name.contains('=') {
        return Ok(name.to_owned());
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn iterations(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// Runs the server through an RFC test vector and checks every message.
    fn run_vector(mechanism: Mechanism, client_first: &str, server_nonce: &str, salt_b64: &str, expected: [&str; 3]) {
        let hash = mechanism.scram_hash().unwrap();
        let salt = B64.decode(salt_b64).unwrap();
        let credentials = Credentials::derive(hash, "pencil", &salt, iterations(4096));
        let first = parse_client_first(mechanism, client_first.as_bytes(), false, &ChannelBindings::default()).unwrap();
        assert_eq!(first.username, "user");
        let (state, server_first) = first.challenge(&credentials, server_nonce, None);
        assert_eq!(String::from_utf8(server_first).unwrap(), expected[0]);
        let server_final = state.finish(expected[1].as_bytes()).unwrap();
        assert_eq!(String::from_utf8(server_final).unwrap(), expected[2]);
    }

    /// RFC 5802 section 5 test vector (SCRAM-SHA-1).
    /// XEP-0474 section 5.3's example: SHA-1 of
    /// `SCRAM-SHA-1 0x1E SCRAM-SHA-1-PLUS 0x1F tls-exporter 0x1E tls-server-end-point`.
    #[test]
    fn downgrade_hash_matches_the_xep_example() {
        let types = ["tls-server-end-point", "tls-exporter"];
        let hash = downgrade_hash(Hash::Sha1, &["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"], Some(&types));
        assert_eq!(hash, "G6k/rBLDqgOhRRaCuuatSDFkJ08=");
        assert_ne!(downgrade_hash(Hash::Sha1, &["SCRAM-SHA-1"], None), hash);
    }

    #[test]
    fn rfc5802_sha1_vector() {
        run_vector(
            Mechanism::ScramSha1,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            [
                "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            ],
        );
    }

    /// RFC 7677 section 3 test vector (SCRAM-SHA-256), and its intermediate keys.
    #[test]
    fn rfc7677_sha256_vector() {
        run_vector(
            Mechanism::ScramSha256,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            [
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            ],
        );
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credentials = Credentials::derive(Hash::Sha256, "pencil", &salt, iterations(4096));
        assert_eq!(hex(&credentials.stored_key), "586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6");
        assert_eq!(hex(&credentials.server_key), "c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5");
        assert!(credentials.verify_password("pencil"));
        assert!(!credentials.verify_password("pencil2"));
    }

    /// Our client and server agree, with and without channel binding; a wrong password
    /// or binding fails at the proof.
    #[test]
    fn client_and_server_agree() {
        let salt = b"0123456789abcdef";
        let credentials = Credentials::derive(Hash::Sha256, "secret", salt, iterations(64));
        let bindings = ChannelBindings { tls_exporter: Some([7; 32]), tls_server_end_point: None };
        for (mechanism, binding, password, ok) in [
            (Mechanism::ScramSha256, None, "secret", true),
            (Mechanism::ScramSha256Plus, Some(("tls-exporter", &[7u8; 32][..])), "secret", true),
            (Mechanism::ScramSha256Plus, Some(("tls-exporter", &[8u8; 32][..])), "secret", false),
            (Mechanism::ScramSha256, None, "wrong", false),
        ] {
            let (client, first) = ScramClient::new(Hash::Sha256, "al,ice=", "clientnonce", binding);
            let parsed = parse_client_first(mechanism, &first, true, &bindings).unwrap();
            assert_eq!(parsed.username, "al,ice=");
            let (server, server_first) = parsed.challenge(&credentials, "servernonce", Some("aGFzaA=="));
            let (expect, client_final) =
                client.respond(&server_first, |salt, i| salted_password(Hash::Sha256, password, salt, i)).unwrap();
            match server.finish(&client_final) {
                Ok(server_final) => {
                    assert!(ok);
                    assert!(expect.verify(&server_final));
                }
                Err(failure) => {
                    assert!(!ok);
                    assert_eq!(failure, SaslFailure::NotAuthorized);
                }
            }
        }
    }

    /// A client saying "y" while we offered -PLUS is being downgraded and fails; bad
    /// gs2 headers and unknown binding types fail too.
    #[test]
    fn refuses_downgrade_and_bad_headers() {
        let none = ChannelBindings::default();
        let first = b"y,,n=user,r=abc";
        assert_eq!(
            parse_client_first(Mechanism::ScramSha256, first, true, &none).unwrap_err(),
            SaslFailure::NotAuthorized
        );
        assert!(parse_client_first(Mechanism::ScramSha256, first, false, &none).is_ok());
        let cases: [&[u8]; 6] = [
            b"x,,n=user,r=abc",
            b"n,,r=abc",
            b"n,,n=user",
            b"n,,m=ext,n=u,r=a",
            b"n,,n=us=er,r=a",
            b"p=tls-exporter,,n=u,r=a",
        ];
        for case in cases {
            assert!(parse_client_first(Mechanism::ScramSha256, case, false, &none).is_err(), "{case:?}");
        }
        let plus = parse_client_first(Mechanism::ScramSha256Plus, b"p=tls-unique,,n=u,r=a", true, &none);
        assert_eq!(plus.unwrap_err(), SaslFailure::NotAuthorized);
    }

    /// The decoy for an unknown user is stable (same salt on every probe) and fails.
    #[test]
    fn decoy_is_stable_and_fails() {
        let a = Credentials::decoy(Hash::Sha256, "ghost", b"secret", iterations(4096));
        let b = Credentials::decoy(Hash::Sha256, "ghost", b"secret", iterations(4096));
        assert_eq!(a, b);
        assert_ne!(a.salt, Credentials::decoy(Hash::Sha256, "other", b"secret", iterations(4096)).salt);
        assert!(!a.verify_password(""));
    }

    /// Truncated or corrupted client-final messages fail cleanly.
    #[test]
    fn corrupt_client_final_fails() {
        let credentials = Credentials::derive(Hash::Sha1, "p", b"salt", iterations(16));
        for message in [&b""[..], b"c=biws", b"c=!!,r=x,p=AA==", b"c=biws,r=wrong,p=AA==", b"\xff"] {
            let first =
                parse_client_first(Mechanism::ScramSha1, b"n,,n=u,r=abc", false, &ChannelBindings::default()).unwrap();
            let (state, _) = first.challenge(&credentials, "xyz", None);
            assert!(state.finish(message).is_err(), "{message:?}");
        }
    }
}
