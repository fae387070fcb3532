//! `wire::http::parse_head` and `check_host`: the request heads of the connections the server
//! frames itself (event streams), straight from the socket.
//!
//! Checked: no panic; a complete head's length is within the input and `MAX_HEAD`; the head
//! alone (without what followed it) parses to the same request, and its prefixes (the head
//! read in pieces) are incomplete, not refused; an incomplete head is shorter than
//! `MAX_HEAD` (the server would wait for more); `check_host` agrees with a count of the
//! `Host` headers.
#![no_main]

use http::{header, Version};
use libfuzzer_sys::fuzz_target;
use wire::http::{check_host, parse_head, HeadError, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some((req, used))) => {
            assert!(
                used <= data.len() && used <= MAX_HEAD,
                "used {used} of {}",
                data.len()
            );
            assert!(
                data[..used].ends_with(b"\n"),
                "a head ends with its empty line"
            );
            let (again, used_again) = match parse_head(&data[..used]) {
                Ok(Some(r)) => r,
                other => panic!("the head alone parses differently: {other:?}"),
            };
            assert_eq!(used_again, used);
            assert_eq!(again.method(), req.method());
            assert_eq!(again.uri(), req.uri());
            assert_eq!(again.version(), req.version());
            assert_eq!(again.headers(), req.headers());

            // The server parses what it has read so far after every read: a head that
            // arrives in pieces must wait (`Ok(None)`) until it is whole, never be refused.
            let some_cut = usize::from(data[0]) * used / 256;
            for cut in [
                used.saturating_sub(1),
                used.saturating_sub(2),
                used / 2,
                used / 3,
                some_cut,
            ] {
                match parse_head(&data[..cut]) {
                    Ok(None) => {}
                    other => panic!("{cut} of the {used} bytes of a valid head: {other:?}"),
                }
            }

            let hosts = req.headers().get_all(header::HOST).iter().count();
            let ok = check_host(req.version(), req.headers()).is_ok();
            let expected = hosts == 1 || (hosts == 0 && req.version() == Version::HTTP_10);
            assert_eq!(ok, expected, "{hosts} Host headers, {:?}", req.version());

            // What the server does next with the target.
            let _ = req.uri().path();
            let _ = req.uri().query();
        }
        Ok(None) => assert!(data.len() < MAX_HEAD, "waits for more past MAX_HEAD"),
        Err(HeadError::TooLarge) => {}
        Err(HeadError::Malformed(m)) => assert!(!m.is_empty()),
    }
});
