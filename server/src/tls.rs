//! TLS material: the configured certificate, or a generated one.
//!
//! Without `auth.certfile`, the first start writes into the data directory a private
//! CA (`ca.pem`) and a server certificate signed by it (`cert.pem`, `key.pem`) naming
//! every configured domain. Clients verify the server by trusting `ca.pem`; every TLS
//! stack accepts this shape, unlike a lone self-signed leaf.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server's TLS configurations and channel-binding data.
pub struct TlsMaterial {
    pub starttls: Arc<rustls::ServerConfig>,
    pub direct: Arc<rustls::ServerConfig>,
    /// HTTPS listeners (`[[listen.http]]` with TLS): ALPN `http/1.1`, which browsers
    /// offer for a WebSocket upgrade (a config offering only `xmpp-client` made
    /// Node's WebSocket refuse the handshake).
    pub http: Arc<rustls::ServerConfig>,
    /// RFC 5929 `tls-server-end-point` (only for the generated certificate, whose
    /// signature hash is known to be SHA-256).
    pub server_end_point: Option<Vec<u8>>,
    pub certfile: PathBuf,
}

/// Loads the configured certificate, or the generated one (generating it first).
pub fn load(
    certfile: Option<&Path>,
    keyfile: Option<&Path>,
    data_dir: &Path,
    hosts: &[String],
) -> Result<TlsMaterial, TlsError> {
    let generated = certfile.is_none();
    let (certfile, keyfile) = match (certfile, keyfile) {
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        _ => {
            let cert = data_dir.join("cert.pem");
            let key = data_dir.join("key.pem");
            if !cert.exists() || !key.exists() {
                generate(data_dir, hosts)?;
            }
            (cert, key)
        }
    };
    let file_error = |path: &Path, reason: String| TlsError::File { path: path.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certfile)
        .map_err(|e| file_error(&certfile, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&certfile, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(&certfile, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&keyfile).map_err(|e| file_error(&keyfile, e.to_string()))?;
    let server_end_point =
        generated.then(|| ring::digest::digest(&ring::digest::SHA256, chain[0].as_ref()).as_ref().to_vec());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let build = |alpn: Option<&[u8]>| -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?;
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(Arc::new(config))
    };
    Ok(TlsMaterial {
        starttls: build(None)?,
        direct: build(Some(b"xmpp-client"))?,
        http: build(Some(b"http/1.1"))?,
        server_end_point,
        certfile,
    })
}

/// Writes `ca.pem`, `cert.pem` (server certificate then CA) and `key.pem` (mode 0600).
fn generate(data_dir: &Path, hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let error = |e: rcgen::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(data_dir)
        .map_err(|e| TlsError::File { path: data_dir.to_owned(), reason: e.to_string() })?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Starling generated CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(error)?;
    let ca = ca_params.self_signed(&ca_key).map_err(error)?;

    let mut leaf_params = CertificateParams::new(hosts.to_vec()).map_err(error)?;
    leaf_params.distinguished_name.push(DnType::CommonName, hosts.first().map(String::as_str).unwrap_or("localhost"));
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let leaf_key = KeyPair::generate().map_err(error)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).map_err(error)?;

    let write = |name: &str, contents: String, private: bool| -> Result<(), TlsError> {
        let path = data_dir.join(name);
        let file_error = |e: std::io::Error| TlsError::File { path: path.clone(), reason: e.to_string() };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        use std::io::Write;
        options.open(&path).and_then(|mut f| f.write_all(contents.as_bytes())).map_err(file_error)
    };
    write("ca.pem", ca.pem(), false)?;
    write("key.pem", leaf_key.serialize_pem(), true)?;
    write("cert.pem", format!("{}{}", leaf.pem(), ca.pem()), false)?;
    log::info!("tls: generated a certificate for {hosts:?} in {}", data_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first load generates the files; the second reuses them unchanged.
    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned(), "example.org".to_owned()];
        let first = load(None, None, dir.path(), &hosts).unwrap();
        assert!(first.server_end_point.is_some());
        let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
        load(None, None, dir.path(), &hosts).unwrap();
        assert_eq!(std::fs::read(dir.path().join("cert.pem")).unwrap(), cert);
        assert!(dir.path().join("ca.pem").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A missing configured file is an error naming the file.
    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let error = load(Some(&missing), Some(&missing), dir.path(), &["localhost".into()]).err().unwrap();
        assert!(error.to_string().contains("nope.pem"));
    }
}
