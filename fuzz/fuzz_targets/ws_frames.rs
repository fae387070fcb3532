//! `wire::ws::FrameReader`: client WebSocket frames, fed in pieces as a socket delivers them.
//!
//! Input layout (so the fuzzer mutates the split points along with the frames):
//! - byte 0: the message size limit (an index into `LIMITS`);
//! - byte 1: bits 0-3: how many split bytes follow (0: one piece), bit 4: start with
//!   `from_partially_read` (bytes behind the handshake), bit 5: feed two pieces between
//!   drains instead of one;
//! - the split bytes: the piece sizes in turn (`b + 1`, cycling);
//! - the rest: the bytes from the client.
//!
//! Checked: no panic (overflow checks are on); every message within the limits (text and
//! binary <= limit, ping <= 125, close code allowed and reason <= 123); after a violation or a
//! close only `Ok(None)`, whatever is fed; the memory held stays bounded (see `bound`); and
//! the messages do not depend on how the bytes were split (the same bytes in one piece give
//! the same messages and the same violation).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::{CloseCode, FrameReader, Message, Violation, MAX_CLOSE_REASON};

/// Around the interesting edges: 0, control-frame sizes, the 7/16/64-bit length forms, the
/// server's real limit (16 KiB) and no limit at all.
const LIMITS: [usize; 16] = [
    0,
    1,
    2,
    7,
    64,
    125,
    126,
    127,
    200,
    1000,
    4096,
    16 * 1024,
    65535,
    65536,
    1 << 20,
    usize::MAX,
];

/// Most bytes of a frame header (2 + 8-byte length + 4-byte mask) minus one: what may be
/// left in the reader's buffer once every complete message has been taken out.
const HEADER_LEFT: usize = 13;
/// A control frame's payload.
const CONTROL: usize = 125;

#[derive(Debug, PartialEq)]
enum Out {
    Msg(Message),
    Err(Violation),
}

fn check_message(m: &Message, limit: usize) {
    match m {
        Message::Text(t) => assert!(
            t.len() <= limit,
            "text of {} bytes > limit {limit}",
            t.len()
        ),
        Message::Binary { len } => assert!(*len <= limit, "binary of {len} bytes > limit {limit}"),
        Message::Ping(p) => assert!(p.len() <= CONTROL, "ping of {} bytes", p.len()),
        Message::Pong => {}
        Message::Close(None) => {}
        Message::Close(Some((code, reason))) => {
            assert!(code.is_allowed(), "close code {} handed out", code.0);
            assert!(
                reason.len() <= MAX_CLOSE_REASON,
                "close reason of {} bytes",
                reason.len()
            );
        }
    }
}

fn check_violation(v: &Violation) {
    assert!(
        [
            CloseCode::PROTOCOL_ERROR,
            CloseCode::INVALID_PAYLOAD,
            CloseCode::TOO_BIG
        ]
        .contains(&v.code),
        "unexpected close code {:?}",
        v
    );
    assert!(
        v.reason.len() <= MAX_CLOSE_REASON,
        "violation reason too long to send: {v:?}"
    );
}

/// Takes every complete message out; returns true once the reader is done (close or
/// violation).
fn drain(r: &mut FrameReader, limit: usize, fed: usize, out: &mut Vec<Out>) -> bool {
    loop {
        match r.next_message() {
            Ok(None) => return false,
            Ok(Some(m)) => {
                check_message(&m, limit);
                let close = matches!(m, Message::Close(_));
                out.push(Out::Msg(m));
                // Every message needs a header and a mask: at most one per 6 bytes fed.
                assert!(
                    out.len() * 6 <= fed,
                    "{} messages from {fed} bytes",
                    out.len()
                );
                if close {
                    return true;
                }
            }
            Err(v) => {
                check_violation(&v);
                out.push(Out::Err(v));
                return true;
            }
        }
    }
}

/// After a close or a violation: nothing more comes out, whatever arrives, and nothing is
/// held but at most a control frame's buffer.
fn check_done(r: &mut FrameReader, rest: &[u8]) {
    assert_eq!(r.next_message(), Ok(None));
    r.feed(rest);
    r.feed(b"\x81\x80\0\0\0\0");
    assert_eq!(r.next_message(), Ok(None));
    assert_eq!(r.next_message(), Ok(None));
    assert!(
        r.buffered() <= 2 * CONTROL,
        "{} bytes held after the end",
        r.buffered()
    );
}

/// The memory the reader may hold once every complete message is out. `fed`: the most bytes
/// fed between two drains. Capacities grow by doubling, so the default bound allows twice the
/// lengths; `strict-buffered` asserts the lengths themselves.
fn bound(limit: usize, fed: usize) -> usize {
    if cfg!(feature = "strict-buffered") {
        limit.saturating_add(fed + HEADER_LEFT + CONTROL)
    } else {
        limit
            .saturating_mul(2)
            .saturating_add(2 * (fed + HEADER_LEFT) + 2 * CONTROL)
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = LIMITS[usize::from(data[0] & 0x0F)];
    let flags = data[1];
    let nsplits = usize::from(flags & 0x0F);
    let partially_read = flags & 0x10 != 0;
    let two_per_drain = flags & 0x20 != 0;
    let Some(splits) = data.get(2..2 + nsplits) else {
        return;
    };
    let stream = &data[2 + nsplits..];

    // In pieces.
    let mut out = Vec::new();
    let mut r: Option<FrameReader> = None;
    let (mut at, mut piece, mut fed_total, mut since_drain, mut most) = (0, 0, 0, 0, 0);
    let mut done = false;
    while at < stream.len() {
        let size = if splits.is_empty() {
            stream.len()
        } else {
            usize::from(splits[piece % splits.len()]) + 1
        };
        let end = stream.len().min(at + size);
        let bytes = &stream[at..end];
        match r.as_mut() {
            None if partially_read => r = Some(FrameReader::from_partially_read(bytes, limit)),
            None => {
                let mut new = FrameReader::new(limit);
                new.feed(bytes);
                r = Some(new);
            }
            Some(r) => r.feed(bytes),
        }
        let reader = r.as_mut().expect("set above");
        at = end;
        piece += 1;
        fed_total += bytes.len();
        since_drain += bytes.len();
        if two_per_drain && piece % 2 == 1 && at < stream.len() {
            continue;
        }
        most = most.max(since_drain);
        since_drain = 0;
        if drain(reader, limit, fed_total, &mut out) {
            done = true;
            check_done(reader, &stream[at..]);
            break;
        }
        let held = reader.buffered();
        let max = bound(limit, most);
        assert!(
            held <= max,
            "{held} bytes held (limit {limit}, pieces up to {most}): more than {max}"
        );
    }
    if let (Some(reader), false) = (r.as_mut(), done) {
        assert_eq!(reader.next_message(), Ok(None));
    }

    // In one piece: the same messages, and the same violation.
    let mut whole = FrameReader::from_partially_read(stream, limit);
    let mut out_whole = Vec::new();
    if drain(&mut whole, limit, stream.len(), &mut out_whole) {
        check_done(&mut whole, b"");
    }
    assert_eq!(
        out, out_whole,
        "the messages depend on how the bytes were split"
    );
});
