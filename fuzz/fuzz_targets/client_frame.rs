//! `app::protocol::parse_client_frame`: the text messages a WebSocket client sends (the
//! reader hands them over as UTF-8 strings).
//!
//! Checked: no panic; an accepted frame has a `ref` of at most 64 bytes, a valid idempotency
//! key if any, and a payload that keeps every field rule; the payload re-serialises (alone,
//! as a publish body, and inside a client frame with the same `ref` and `key`) to something
//! accepted again unchanged.
#![no_main]

use app::protocol::{
    parse_client_frame, valid_idempotency_key, ClientFrame, PublishError, MAX_PUBLISH_BYTES,
};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(text) {
        Ok(f) => {
            assert!(text.len() <= MAX_PUBLISH_BYTES);
            assert!(
                f.reference.len() <= 64,
                "ref of {} bytes",
                f.reference.len()
            );
            if let Some(key) = &f.key {
                assert!(valid_idempotency_key(key).is_ok(), "key {key:?}");
            }
            common::check_valid(&f.payload);
            common::check_round_trip(&f.payload);

            // The shared client type writes the key itself now.
            let frame = ClientFrame::Publish {
                reference: f.reference.clone(),
                key: f.key.clone(),
                payload: f.payload.clone(),
            };
            let json = serde_json::to_string(&frame).expect("a client frame serialises");
            match parse_client_frame(&json) {
                Ok(again) => {
                    assert_eq!(again.reference, f.reference);
                    assert_eq!(again.key, f.key);
                    common::assert_same(&again.payload, &f.payload);
                }
                Err(e) => panic!("re-serialised frame refused: {e:?}\n{json}"),
            }
        }
        Err((_, PublishError::TooLarge)) => assert!(text.len() > MAX_PUBLISH_BYTES),
        Err((_, e)) => assert!(!e.message().is_empty()),
    }
});
