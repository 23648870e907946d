//! Capability tokens from hostile bytes: as bearer text, and as binary tokens (a real token
//! with the input XORed over it). Never panics; nothing the input changed is ever accepted.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use libfuzzer_sys::fuzz_target;
use ron_auth::token::{Caveats, Op, attenuate, inspect};
use ron_auth::{Auth, AuthSection, KeyRing, NodeIdentity, Request};

struct Fixture {
    auth: Auth,
    token: String,
    binary: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let auth = Auth::new(
        NodeIdentity::ephemeral(),
        KeyRing::in_memory(),
        &AuthSection::default(),
        ron_auth::unix_now(),
    )
    .expect("auth");
    let token = auth
        .mint(&Caveats {
            ops: [Op::Put].into(),
            max_bytes: Some(1 << 20),
            ..Caveats::default()
        })
        .expect("mint");
    let binary = URL_SAFE.decode(&token).expect("base64");
    Fixture {
        auth,
        token,
        binary,
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let put = Request {
        op: Op::Put,
        path: "/put",
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Raw text, wherever a token is read.
        let Ok(text) = std::str::from_utf8(rest) else { return };
        if f.auth.authorize(Some(text), &put).is_ok() {
            assert_eq!(text.trim(), f.token, "only the real token is accepted");
        }
        let _ = inspect(text);
        let _ = attenuate(text, &Caveats { expires_at: Some(1), ..Caveats::default() });
    } else {
        // The real token with the input XORed over its bytes.
        let mut bytes = f.binary.clone();
        for (b, x) in bytes.iter_mut().zip(rest) {
            *b ^= x;
        }
        let text = URL_SAFE.encode(&bytes);
        if f.auth.authorize(Some(&text), &put).is_ok() {
            // A different encoding of the very same signed content is acceptable; different
            // content is not.
            let seen = inspect(&text).expect("an accepted token inspects");
            let real = inspect(&f.token).expect("real token");
            assert_eq!(seen, real);
        }
    }
});
