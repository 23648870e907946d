//! HELLO (`app_proto_id = 0`): what each side supports.

use serde::{Deserialize, Serialize};

use super::{DEFAULT_MAX_FRAME, DEFAULT_MAX_INFLIGHT, VERSION};

/// The JSON payload of a HELLO response. Unknown fields are ignored, so newer peers may add
/// more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Largest frame the sender accepts, length field included.
    pub max_frame: u32,
    /// Most open streams per connection the sender accepts.
    pub max_inflight: u32,
    /// OAP versions spoken.
    pub oap_versions: Vec<u8>,
    /// The sender's software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Flag names the sender supports (`"COMP"`, `"ACK_REQ"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Transports the sender listens on (`"tls"`, `"libp2p"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transports: Option<Vec<String>>,
}

impl Default for Hello {
    fn default() -> Self {
        Self {
            // 1 MiB fits a u32.
            max_frame: DEFAULT_MAX_FRAME as u32,
            max_inflight: DEFAULT_MAX_INFLIGHT as u32,
            oap_versions: vec![VERSION],
            version: None,
            flags: None,
            transports: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_spec_minimum() {
        assert_eq!(
            serde_json::to_string(&Hello::default()).unwrap(),
            r#"{"max_frame":1048576,"max_inflight":64,"oap_versions":[1]}"#
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let h: Hello = serde_json::from_str(
            r#"{"max_frame":4096,"max_inflight":8,"oap_versions":[1,2],"future":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(h.max_frame, 4096);
        assert_eq!(h.oap_versions, [1, 2]);
    }
}
