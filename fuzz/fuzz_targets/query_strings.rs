//! Query strings as axum's `Query` extractor reads them (serde_urlencoded 0.7): the
//! subscribe query of `/api/sse` and `/api/ws`, the poll query, the history query, and
//! `StreamSet::parse` / `Stream::parse` on what they carry.
//!
//! Checked: no panic; an accepted stream list is never empty and its canonical form
//! (`to_query`) parses back to the same set; an accepted query re-encodes to one that
//! parses back the same.
#![no_main]

use app::protocol::{HistoryQuery, PollQuery, Stream, StreamSet, SubscribeQuery};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn streams(list: Option<&str>) {
    if let Ok(set) = StreamSet::parse(list) {
        assert!(!set.is_empty(), "{list:?} parsed to an empty set");
        let canonical = set.to_query();
        assert_eq!(StreamSet::parse(Some(&canonical)), Ok(set), "{canonical:?}");
        assert!(Stream::ALL.iter().any(|s| set.contains(*s)));
    }
}

/// Parses `query` as `Q`; if accepted, re-encodes it and checks it parses back the same.
fn round_trip<Q>(query: &str) -> Option<Q>
where
    Q: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let q: Q = serde_urlencoded::from_str(query).ok()?;
    let encoded = serde_urlencoded::to_string(&q).expect("a query re-encodes");
    let again: Q = serde_urlencoded::from_str(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded query {encoded:?} refused: {e}"));
    assert_eq!(again, q, "{encoded:?}");
    Some(q)
}

fuzz_target!(|data: &[u8]| {
    // axum hands `Uri::query()`, a `&str`, to serde_urlencoded (which percent-decodes it,
    // so the decoded values may hold any bytes, lossily made UTF-8).
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(q) = round_trip::<SubscribeQuery>(query) {
        streams(q.streams.as_deref());
    }
    if let Some(q) = round_trip::<PollQuery>(query) {
        streams(q.streams.as_deref());
    }
    if let Some(q) = round_trip::<HistoryQuery>(query) {
        if let Some(name) = q.stream.as_deref() {
            if let Some(s) = Stream::parse(name) {
                assert_eq!(s.as_str(), name);
            }
        }
    }
    // The stream list on its own, as the server passes it (also reached through the queries
    // above, but only after percent-decoding).
    streams(Some(query));
});
