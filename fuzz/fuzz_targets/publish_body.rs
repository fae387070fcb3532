//! `app::protocol::parse_publish`: the body of `POST /api/publish`, any bytes.
//!
//! Checked: no panic; an accepted payload keeps every field rule and re-serialises to a
//! body that is accepted again unchanged; a refusal has a message; bodies over
//! `MAX_PUBLISH_BYTES` are refused as too large.
#![no_main]

use app::protocol::{parse_publish, PublishError, MAX_PUBLISH_BYTES};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match parse_publish(data) {
        Ok(p) => {
            assert!(data.len() <= MAX_PUBLISH_BYTES);
            common::check_valid(&p);
            common::check_round_trip(&p);
        }
        Err(PublishError::TooLarge) => assert!(data.len() > MAX_PUBLISH_BYTES),
        Err(e) => assert!(!e.message().is_empty()),
    }
});
