//! HELLO (`app_proto_id = 0`): what each side supports.

use serde::{Deserialize, Serialize};

use super::{DEFAULT_MAX_FRAME, DEFAULT_MAX_INFLIGHT, VERSION};
use crate::{ErrorKind, Problem};

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

/// Checks a client's HELLO payload, as a server does before serving anything on the
/// connection: a JSON object (`{}` will do) whose `oap_versions`, when given, include 1.
/// Refusals are 400 `bad_input`, or `bad_version` when version 1 is missing.
pub fn check_client_hello(payload: &[u8]) -> Result<(), Problem> {
    let bad = |why: &str| Problem::new(ErrorKind::BadInput, format!("HELLO: {why}"));
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|_| bad("the payload is not a JSON object"))?;
    match fields.get("oap_versions") {
        None => Ok(()),
        Some(serde_json::Value::Array(versions))
            if versions
                .iter()
                .any(|v| v.as_u64() == Some(u64::from(VERSION))) =>
        {
            Ok(())
        }
        Some(_) => Err(Problem::with_code(
            ErrorKind::BadInput,
            "bad_version",
            "HELLO: this node speaks OAP version 1 only",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    fn refused(payload: &[u8]) -> Option<&'static str> {
        check_client_hello(payload).err().map(|p| {
            if p.code() == "bad_version" {
                "bad_version"
            } else {
                "bad_input"
            }
        })
    }

    #[test]
    fn a_client_hello_is_a_json_object_that_speaks_version_1() {
        for good in [
            &br#"{}"#[..],
            br#"{"oap_versions":[1]}"#,
            br#"{"oap_versions":[2,1],"max_frame":4096,"unknown":{"later":true}}"#,
        ] {
            assert_eq!(refused(good), None, "{}", String::from_utf8_lossy(good));
        }
        for (bad, why) in [
            (&b""[..], "bad_input"),
            (b"not json", "bad_input"),
            (b"[1]", "bad_input"),
            (b"\"{}\"", "bad_input"),
            (br#"{"oap_versions":[2]}"#, "bad_version"),
            (br#"{"oap_versions":[]}"#, "bad_version"),
            (br#"{"oap_versions":"1"}"#, "bad_version"),
        ] {
            assert_eq!(refused(bad), Some(why), "{}", String::from_utf8_lossy(bad));
        }
    }

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
