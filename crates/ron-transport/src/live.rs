//! A certificate that can be replaced while the node serves. Every TLS listener (HTTPS, OAP/1,
//! HTTP/3) asks it for the certificate at each handshake, so a new pair is served from the next
//! handshake on, and connections already open keep the one they started with.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::{TlsError, TlsMaterial, provider};

/// The certificate and key the node serves now.
pub struct LiveCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// When the served certificate expires (unix seconds).
    not_after: AtomicI64,
}

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCert")
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

/// The pair as rustls serves it, checked (the key is the certificate's), and when the
/// certificate expires.
fn certified(material: TlsMaterial) -> Result<(CertifiedKey, i64), TlsError> {
    let leaf = material
        .chain
        .first()
        .ok_or_else(|| TlsError::Config("no certificate".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::Config(format!("the certificate does not parse: {e}")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key = CertifiedKey::from_der(material.chain, material.key, &provider())
        .map_err(|e| TlsError::Config(format!("the key does not fit the certificate: {e}")))?;
    Ok((key, not_after))
}

impl LiveCert {
    /// Serves `material` until replaced.
    pub fn new(material: TlsMaterial) -> Result<Arc<Self>, TlsError> {
        let (key, not_after) = certified(material)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
            not_after: AtomicI64::new(not_after),
        }))
    }

    /// Serves `material` from the next handshake on; on an error (a certificate that does not
    /// parse, a key that is not its key) the pair served so far stays.
    pub fn replace(&self, material: TlsMaterial) -> Result<(), TlsError> {
        let (key, not_after) = certified(material)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// When the certificate served now expires (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::DevCertificate;

    #[test]
    fn a_pair_is_replaced_and_a_torn_one_is_refused() {
        let names = ["localhost".to_owned()];
        let (a, b) = (
            DevCertificate::generate(&names).unwrap().material(),
            DevCertificate::generate(&names).unwrap().material(),
        );
        let live = LiveCert::new(a.clone()).unwrap();
        let served = |live: &LiveCert| live.current.read().unwrap().cert[0].clone();
        assert_eq!(served(&live), a.chain()[0]);
        // A's certificate with B's key: refused, A stays.
        let torn = TlsMaterial {
            chain: a.chain().to_vec(),
            key: b.key.clone_key(),
        };
        assert!(live.replace(torn).is_err());
        assert_eq!(served(&live), a.chain()[0]);
        live.replace(b.clone()).unwrap();
        assert_eq!(served(&live), b.chain()[0]);
        // rcgen's certificates run to 4096.
        assert!(live.not_after() > 4_000_000_000);
    }
}
