//! Mail from the network: an envelope's head (what a mailbox node reads of a send), a mail
//! record (a DHT value, a registration), a `ron-mail-auth` proof and an OAP/1 0x0201 request.
//! Arbitrary bytes never panic; whatever decodes is consistent with what it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::oap::mail::MailRequest;
use svc_mailbox::envelope::{Head, MAX_BUCKET, MIN_BUCKET};
use svc_mailbox::proof::Verifier;
use svc_mailbox::record::MailRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = Head::read(data, MAX_BUCKET) {
        assert!(head.size.is_power_of_two() && head.size >= MIN_BUCKET && head.size <= MAX_BUCKET);
        assert_eq!(head.id, ron_proto::Address::of(data));
    }
    if let Ok(record) = MailRecord::decode(data) {
        record.verify().expect("decode verifies");
        let identity = record.identity().expect("a verified record names a key");
        assert!(MailRecord::acceptable(&MailRecord::dht_key(&identity), data, None));
        let again = record.encode().expect("a valid record encodes");
        assert_eq!(MailRecord::decode(&again).expect("re-decodes"), record);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // A forged proof never passes.
        assert!(Verifier::default().check(Some(text), "POST", "/mail/fetch", b"", 0).is_err());
    }
    let _ = serde_json::from_slice::<MailRequest>(data);
});
