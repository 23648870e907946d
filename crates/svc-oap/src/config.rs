//! `[oap]`: where the OAP/1 listener listens and how large its frames and streams may be.

/// `[oap]`: the OAP/1 listener, started whenever the node has a TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OapSection {
    /// Address of the listener (default `127.0.0.1:7702`). Fixed at start; `--oap-listen`
    /// overrides it.
    pub listen: std::net::SocketAddr,
    /// Largest frame, length field included (default 1048576, 4096 to 16777216). Fixed.
    pub max_frame: usize,
    /// Open streams per connection (default 64, 1 to 4096). Fixed.
    pub max_inflight: usize,
}

impl Default for OapSection {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7702)),
            max_frame: ron_proto::oap::DEFAULT_MAX_FRAME,
            max_inflight: ron_proto::oap::DEFAULT_MAX_INFLIGHT,
        }
    }
}

impl ron_kernel::config::Section for OapSection {
    const NAME: &'static str = "oap";

    fn validate(&self) -> Result<(), ron_kernel::config::FieldError> {
        use ron_kernel::config::FieldError;
        if !(4096..=16 << 20).contains(&self.max_frame) {
            return Err(FieldError::new(
                "max_frame",
                "must be between 4096 and 16777216",
            ));
        }
        if !(1..=4096).contains(&self.max_inflight) {
            return Err(FieldError::new(
                "max_inflight",
                "must be between 1 and 4096",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), ron_kernel::config::FieldError> {
        use ron_kernel::config::unchanged;
        unchanged("listen", &self.listen, &next.listen)?;
        unchanged("max_frame", &self.max_frame, &next.max_frame)?;
        unchanged("max_inflight", &self.max_inflight, &next.max_inflight)
    }
}

#[cfg(test)]
mod tests {
    use ron_kernel::config::Section;

    use super::*;

    #[test]
    fn limits_are_checked_and_none_changes_live() {
        let ok = OapSection::default();
        assert!(ok.validate().is_ok());
        for bad in [
            OapSection {
                max_frame: 4095,
                ..OapSection::default()
            },
            OapSection {
                max_frame: (16 << 20) + 1,
                ..OapSection::default()
            },
            OapSection {
                max_inflight: 0,
                ..OapSection::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let moved = OapSection {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7703)),
            ..OapSection::default()
        };
        assert!(ok.check_live(&ok.clone()).is_ok());
        assert!(ok.check_live(&moved).is_err());
    }
}
