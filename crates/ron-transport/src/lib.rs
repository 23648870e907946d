//! Transport security for RustyOnions: rustls server configurations built with one crypto
//! provider chosen explicitly (ring), from PEM files or from a development certificate
//! generated on first use.
//!
//! ```
//! let dev = ron_transport::DevCertificate::generate(&["localhost".into()]).unwrap();
//! let cert = ron_transport::LiveCert::new(dev.material()).unwrap();
//! let config = ron_transport::server_config(cert, &[b"h2", b"http/1.1"]).unwrap();
//! assert_eq!(config.alpn_protocols.len(), 2);
//! ```
#![forbid(unsafe_code)]

pub mod deadline;
#[cfg(feature = "http3")]
pub mod h3;
pub mod limits;
mod live;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

pub use live::LiveCert;
pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::rustls;
pub use tokio_rustls::server::TlsStream;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The certificate and key do not make a usable configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The process's one crypto provider: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process default (for libraries that build their own
/// configurations). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsMaterial {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_error(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(cert, e))?;
        if chain.is_empty() {
            return Err(file_error(cert, "no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }

    /// The certificate chain.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// A self-signed development certificate.
pub struct DevCertificate {
    material: TlsMaterial,
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl DevCertificate {
    /// A new certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Config(format!("cannot generate a certificate: {e}")))?;
        let key_der = Zeroizing::new(certified.signing_key.serialize_der());
        let key = PrivateKeyDer::try_from(key_der.to_vec())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: Zeroizing::new(certified.signing_key.serialize_pem()),
            material: TlsMaterial {
                chain: vec![certified.cert.der().clone()],
                key,
            },
        })
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, or generates them there (the key 0600,
    /// both written atomically) on first use. Returns the certificate's path too.
    pub fn load_or_create(
        dir: &Path,
        names: &[String],
    ) -> Result<(TlsMaterial, PathBuf), TlsError> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() && key.exists() {
            return Ok((TlsMaterial::from_pem_files(&cert, &key)?, cert));
        }
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let dev = Self::generate(names)?;
        ron_auth::write_secret(&key, dev.key_pem.as_bytes(), true)
            .map_err(|e| file_error(&key, e))?;
        ron_auth::write_secret(&cert, dev.cert_pem.as_bytes(), true)
            .map_err(|e| file_error(&cert, e))?;
        tracing::info!(path = %cert.display(), "created a self-signed development certificate");
        Ok((dev.material, cert))
    }

    /// The certificate and key.
    pub fn material(self) -> TlsMaterial {
        self.material
    }

    /// The certificate in PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Accepts the next connection (with `TCP_NODELAY` set), riding out accept failures such as
/// running out of file descriptors with a short pause instead of spinning or giving up.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // No Nagle: a response's head and body often go out as separate writes, and
                // waiting for the peer's delayed ACK between them costs tens of milliseconds.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                return (tcp, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TLS server configuration (TLS 1.2 and 1.3, ring) offering `alpn` in order of
/// preference, serving whatever `cert` holds at each handshake.
pub fn server_config(cert: Arc<LiveCert>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_dev_certificate_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (first, path) = DevCertificate::load_or_create(dir.path(), &names).unwrap();
        let (again, _) = DevCertificate::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.chain(), again.chain());
        assert_eq!(path, dir.path().join("cert.pem"));
        let mode = fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        server_config(LiveCert::new(again).unwrap(), &[b"h2"]).unwrap();
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        fs::write(&cert, "not a certificate").unwrap();
        let err = TlsMaterial::from_pem_files(&cert, &dir.path().join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("c.pem"), "{err}");
    }
}
