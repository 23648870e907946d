//! The `[gateway]` config section.

use std::net::SocketAddr;
use std::path::PathBuf;

use ron_kernel::config::{FieldError, Section, unchanged};
use serde::{Deserialize, Serialize};

/// `[gateway]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address of the plain-HTTP listener (default `127.0.0.1:7700`). Fixed at start;
    /// `--gateway` overrides it.
    pub listen: SocketAddr,
    /// Deadline for a whole request, in milliseconds (default 10000, 1 to 3600000), on every
    /// route except object uploads and downloads, which stream for as long as they move. Live.
    pub request_timeout_ms: u64,
    /// Largest object `POST /put` accepts, in bytes (default 4 GiB). Live.
    pub max_put_bytes: u64,
    /// Address of the TLS listener (HTTP/1.1 and HTTP/2), used when a certificate is
    /// configured or `--tls-self-signed` is given (default `127.0.0.1:7443`). Fixed at start;
    /// `--gateway-tls` overrides it.
    pub tls_listen: SocketAddr,
    /// PEM certificate chain for the TLS listener (with `tls_key`). Fixed at start.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener (with `tls_cert`). Fixed at start.
    pub tls_key: Option<PathBuf>,
    /// UDP address of the HTTP/3 listener (same certificate as the TLS listener), in a `ron`
    /// built with the `http3` feature; off unless set. Fixed at start; `--gateway-h3`
    /// overrides it.
    pub h3_listen: Option<SocketAddr>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            request_timeout_ms: 10_000,
            max_put_bytes: 4 << 30,
            tls_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            tls_cert: None,
            tls_key: None,
            h3_listen: None,
        }
    }
}

impl Section for GatewaySection {
    const NAME: &'static str = "gateway";

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=3_600_000).contains(&self.request_timeout_ms) {
            return Err(FieldError::new(
                "request_timeout_ms",
                "must be between 1 and 3600000",
            ));
        }
        if self.max_put_bytes == 0 {
            return Err(FieldError::new("max_put_bytes", "must be positive"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(FieldError::new(
                "tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("listen", &self.listen, &next.listen)?;
        unchanged("tls_listen", &self.tls_listen, &next.tls_listen)?;
        unchanged("tls_cert", &self.tls_cert, &next.tls_cert)?;
        unchanged("tls_key", &self.tls_key, &next.tls_key)?;
        unchanged("h3_listen", &self.h3_listen, &next.h3_listen)
    }
}
