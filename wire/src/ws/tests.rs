//! Frame-level conformance: table-driven, named after RFC 6455's sections and the
//! Autobahn|Testsuite case families (the suite itself needs Python 2, which these machines
//! lack). Every case is fed to the reader twice: in one piece and one byte at a time, so a
//! frame split at any point parses the same. The same families run over real sockets in
//! the server's tests (`server/tests/wire.rs`).

use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: masked (as browsers send them), with the minimal length encoding.
pub fn client(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_masked(first, payload, MASK)
}

#[derive(Clone, Copy)]
pub enum Len {
    Short,
    U16,
    U64,
}

/// A client frame with the length in the given encoding (non-minimal forms included).
pub fn client_len(first: u8, payload: &[u8], len: Len) -> Vec<u8> {
    let mask = MASK;
    let mut f = vec![first];
    match len {
        Len::Short => f.push(0x80 | payload.len() as u8),
        Len::U16 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        Len::U64 => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

const FIN_TEXT: u8 = 0x81;
const TEXT: u8 = 0x01;
const FIN_BINARY: u8 = 0x82;
const FIN_CONT: u8 = 0x80;
const CONT: u8 = 0x00;
const PING: u8 = 0x89;
const PONG: u8 = 0x8A;
const CLOSE: u8 = 0x88;

/// What a reader makes of `bytes`: the messages, then the violation (if any).
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<CloseCode>,
}

fn read_all(bytes: &[u8], limit: usize, byte_by_byte: bool) -> Outcome {
    let mut r = FrameReader::new(limit);
    let mut messages = Vec::new();
    let chunks: Vec<&[u8]> = if byte_by_byte {
        bytes.chunks(1).collect()
    } else {
        vec![bytes]
    };
    for chunk in chunks {
        r.feed(chunk);
        loop {
            match r.next_message() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(v) => {
                    return Outcome {
                        messages,
                        error: Some(v.code),
                    }
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
    }
}

/// Runs one case both ways and checks the outcome is the same.
fn check(name: &str, bytes: &[u8], limit: usize, messages: Vec<Message>, error: Option<u16>) {
    let want = Outcome {
        messages,
        error: error.map(CloseCode),
    };
    assert_eq!(read_all(bytes, limit, false), want, "{name} (one piece)");
    assert_eq!(read_all(bytes, limit, true), want, "{name} (byte by byte)");
}

fn text(s: &str) -> Message {
    Message::Text(s.to_owned())
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

const LIMIT: usize = 16 * 1024;

#[test]
fn accept_key_matches_rfc_6455_section_1_3() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn handshake_key_must_be_base64_of_16_bytes_section_4_2_1() {
    assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
    for bad in [
        &b""[..],
        b"not base64 at all!!!!!!!",
        b"dGhlIHNhbXBsZSBub25jZQ", // unpadded
        b"dGhlIHNhbXBsZSBub25jZQ==AAAA",
        b"dGhlIHNhbXBsZQ==",         // 10 bytes
        b"dGhlIHNhbXBsZSBub25jZSEh", // 18 bytes
    ] {
        assert!(!valid_key(bad), "{bad:?}");
    }
}

#[test]
fn opcode_round_trips_and_reserved_ones_are_refused() {
    for b in 0u8..16 {
        match OpCode::try_from(b) {
            Ok(op) => assert_eq!(op.byte(), b),
            Err(e) => assert!(matches!(e, 3..=7 | 0xB..=0xF), "{b}"),
        }
    }
}

#[test]
fn encodes_all_three_length_forms_section_5_2() {
    for (n, header) in [
        (0usize, 2usize),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
    ] {
        let mut out = Vec::new();
        encode(&mut out, OpCode::Text, &vec![b'a'; n]);
        assert_eq!(out.len(), n + header, "{n}");
        assert_eq!(out[0], 0x81);
    }
}

#[test]
fn close_reasons_are_cut_at_a_character_boundary_section_5_5() {
    let mut out = Vec::new();
    encode_close(&mut out, Some(CloseCode::TOO_BIG), "too big");
    assert_eq!(out, b"\x88\x09\x03\xf1too big");
    // 122 ASCII bytes, then a 2-byte character that would end at byte 124.
    let reason = format!("{}é", "a".repeat(122));
    let mut out = Vec::new();
    encode_close(&mut out, Some(CloseCode::NORMAL), &reason);
    assert_eq!(out[1] as usize, 2 + 122);
    assert!(std::str::from_utf8(&out[4..]).is_ok());
    let mut out = Vec::new();
    encode_close(&mut out, None, "ignored");
    assert_eq!(out, b"\x88\x00");
}

/// Autobahn 1.1 / 1.2: text and binary messages of every length encoding.
#[test]
fn framing_1_text_and_binary_lengths() {
    let big = 70_000;
    for n in [0, 1, 125, 126, 127, 128, 65535, 65536, big] {
        let s = "*".repeat(n);
        check(
            &format!("1.1 text {n}"),
            &client(FIN_TEXT, s.as_bytes()),
            big,
            vec![text(&s)],
            None,
        );
        check(
            &format!("1.2 binary {n}"),
            &client(FIN_BINARY, s.as_bytes()),
            big,
            vec![Message::Binary { len: n }],
            None,
        );
    }
}

/// §5.2: the length may come in a longer form than needed; it is accepted (see `header`).
#[test]
fn framing_non_minimal_length_encodings_are_accepted() {
    for len in [Len::Short, Len::U16, Len::U64] {
        check(
            "non-minimal",
            &client_len(FIN_TEXT, b"Hello", len),
            LIMIT,
            vec![text("Hello")],
            None,
        );
    }
}

/// §5.2: "the most significant bit MUST be 0" of a 64-bit length.
#[test]
fn framing_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
    let mut f = vec![FIN_TEXT, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    check("msb", &f, LIMIT, vec![], Some(1002));
}

/// Autobahn 2.x: pings and pongs.
#[test]
fn pings_and_pongs_2() {
    check(
        "2.1 empty ping",
        &client(PING, b""),
        LIMIT,
        vec![Message::Ping(vec![])],
        None,
    );
    check(
        "2.2 ping text",
        &client(PING, b"Hello"),
        LIMIT,
        vec![Message::Ping(b"Hello".to_vec())],
        None,
    );
    let bin = [0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
    check(
        "2.3 ping binary",
        &client(PING, &bin),
        LIMIT,
        vec![Message::Ping(bin.to_vec())],
        None,
    );
    check(
        "2.4 ping 125",
        &client(PING, &[0xfe; 125]),
        LIMIT,
        vec![Message::Ping(vec![0xfe; 125])],
        None,
    );
    check(
        "2.5 ping 126",
        &client(PING, &[0xfe; 126]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "2.6 ping 125 slowly",
        &client(PING, &[0xfe; 125]),
        LIMIT,
        vec![Message::Ping(vec![0xfe; 125])],
        None,
    );
    check(
        "2.7 unsolicited pong",
        &client(PONG, b""),
        LIMIT,
        vec![Message::Pong],
        None,
    );
    check(
        "2.8 unsolicited pong payload",
        &client(PONG, b"unsolicited"),
        LIMIT,
        vec![Message::Pong],
        None,
    );
    let ten: Vec<Vec<u8>> = (0..10).map(|_| client(PING, b"payload")).collect();
    check(
        "2.10 ten pings",
        &cat(&ten),
        LIMIT,
        vec![Message::Ping(b"payload".to_vec()); 10]
            .into_iter()
            .collect(),
        None,
    );
}

/// Autobahn 3.x: reserved bits without a negotiated extension fail the connection; what
/// came before is still delivered.
#[test]
fn reserved_bits_3() {
    for (case, first) in [
        ("3.1", 0xC1u8),
        ("3.2", 0xA1),
        ("3.3", 0x91),
        ("3.4", 0xF1),
        ("3.5", 0xC2),
        ("3.6", 0xC9),
        ("3.7", 0xC8),
    ] {
        let bytes = cat(&[
            client(FIN_TEXT, b"before"),
            client(first, b"x"),
            client(FIN_TEXT, b"after"),
        ]);
        check(case, &bytes, LIMIT, vec![text("before")], Some(1002));
    }
}

/// Autobahn 4.x: reserved opcodes.
#[test]
fn reserved_opcodes_4() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let bytes = cat(&[
            client(FIN_TEXT, b"before"),
            client(0x80 | op, b""),
            client(FIN_TEXT, b"after"),
        ]);
        check(
            &format!("4.x opcode {op:x}"),
            &bytes,
            LIMIT,
            vec![text("before")],
            Some(1002),
        );
    }
}

/// Autobahn 5.x: fragmentation.
#[test]
fn fragmentation_5() {
    check(
        "5.1 fragmented ping",
        &cat(&[client(0x09, b"frag"), client(FIN_CONT, b"ment")]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "5.2 fragmented pong",
        &cat(&[client(0x0A, b"frag"), client(FIN_CONT, b"ment")]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "5.3 text in two",
        &cat(&[client(TEXT, b"frag"), client(FIN_CONT, b"ment")]),
        LIMIT,
        vec![text("fragment")],
        None,
    );
    check(
        "5.6 ping between fragments",
        &cat(&[
            client(TEXT, b"frag"),
            client(PING, b"p"),
            client(FIN_CONT, b"ment"),
        ]),
        LIMIT,
        vec![Message::Ping(b"p".to_vec()), text("fragment")],
        None,
    );
    check(
        "5.6b pong and close between fragments",
        &cat(&[
            client(TEXT, b"frag"),
            client(PONG, b""),
            client(CLOSE, &[3, 232]),
        ]),
        LIMIT,
        vec![
            Message::Pong,
            Message::Close(Some((CloseCode::NORMAL, String::new()))),
        ],
        None,
    );
    check(
        "5.9 continuation first",
        &cat(&[client(FIN_CONT, b"x"), client(FIN_TEXT, b"y")]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "5.10 unfinished continuation first",
        &client(CONT, b"x"),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "5.15 continuation after the message ended",
        &cat(&[
            client(TEXT, b"a"),
            client(FIN_CONT, b"b"),
            client(FIN_CONT, b"c"),
        ]),
        LIMIT,
        vec![text("ab")],
        Some(1002),
    );
    check(
        "5.18 new text inside a fragmented one",
        &cat(&[client(TEXT, b"a"), client(FIN_TEXT, b"b")]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "5.19 many fragments with pings",
        &cat(&[
            client(TEXT, b"f1"),
            client(CONT, b"f2"),
            client(PING, b"p1"),
            client(CONT, b"f3"),
            client(CONT, b""),
            client(PING, b"p2"),
            client(FIN_CONT, b"f5"),
        ]),
        LIMIT,
        vec![
            Message::Ping(b"p1".to_vec()),
            Message::Ping(b"p2".to_vec()),
            text("f1f2f3f5"),
        ],
        None,
    );
    check(
        "5.x empty fragments",
        &cat(&[client(TEXT, b""), client(CONT, b""), client(FIN_CONT, b"")]),
        LIMIT,
        vec![text("")],
        None,
    );
    check(
        "5.x binary in fragments",
        &cat(&[client(0x02, &[1, 2]), client(FIN_CONT, &[3])]),
        LIMIT,
        vec![Message::Binary { len: 3 }],
        None,
    );
}

/// Autobahn 6.x: UTF-8 handling of text messages.
#[test]
fn utf8_6() {
    let valid = [
        "",
        "Hello-µ@ßöäüàá-UTF-8!!",
        "κόσμε",
        "\u{10FFFF}",
        "\u{FFFF}",
        "\u{E000}",
        "𝄞 music",
    ];
    for s in valid {
        check(
            "6.x valid",
            &client(FIN_TEXT, s.as_bytes()),
            LIMIT,
            vec![text(s)],
            None,
        );
        // Split into single-byte fragments: code points split across frames are fine.
        let mut frames: Vec<Vec<u8>> = s.as_bytes().iter().map(|b| client(CONT, &[*b])).collect();
        frames.insert(0, client(TEXT, b""));
        frames.push(client(FIN_CONT, b""));
        check(
            "6.x valid, split code points",
            &cat(&frames),
            LIMIT,
            vec![text(s)],
            None,
        );
    }
    let invalid: [&[u8]; 12] = [
        &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
        ],
        &[0xff],
        &[0xfe],
        &[0x80],
        &[0xc0, 0xaf],                   // overlong '/'
        &[0xe0, 0x80, 0xaf],             // overlong
        &[0xf8, 0x88, 0x80, 0x80, 0x80], // 5-byte form
        &[0xed, 0xa0, 0x80],             // surrogate
        &[0xed, 0xbf, 0xbf],             // surrogate
        &[0xf4, 0x90, 0x80, 0x80],       // above U+10FFFF
        &[0xc2],                         // truncated at the end
        &[0xe2, 0x82],                   // truncated at the end
    ];
    for bytes in invalid {
        check(
            &format!("6.x invalid {bytes:x?}"),
            &client(FIN_TEXT, bytes),
            LIMIT,
            vec![],
            Some(1007),
        );
    }
}

/// Autobahn 6.4 ("fail fast") and issue: invalid UTF-8 in a non-final fragment fails the
/// connection when that fragment arrives, without waiting for the end of the message.
#[test]
fn utf8_fails_fast_in_a_non_final_fragment() {
    let mut r = FrameReader::new(LIMIT);
    r.feed(&client(TEXT, &[b'a', 0xff, b'b']));
    assert_eq!(
        r.next_message().unwrap_err().code,
        CloseCode::INVALID_PAYLOAD
    );
    // And inside one frame whose end has not arrived yet.
    let frame = client(
        FIN_TEXT,
        &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xf4, 0x90, 0x80,
            0x80, 0x65, 0x64,
        ],
    );
    let mut r = FrameReader::new(LIMIT);
    r.feed(&frame[..frame.len() - 2]);
    assert_eq!(
        r.next_message().unwrap_err().code,
        CloseCode::INVALID_PAYLOAD
    );
    // A character split at the end of a fragment is not an error (yet).
    let mut r = FrameReader::new(LIMIT);
    r.feed(&client(TEXT, &[b'a', 0xe2, 0x82]));
    assert_eq!(r.next_message(), Ok(None));
    r.feed(&client(FIN_CONT, &[0xac]));
    assert_eq!(r.next_message(), Ok(Some(text("a€"))));
}

/// Autobahn 7.x: closing.
#[test]
fn close_7() {
    check(
        "7.3.1 empty close",
        &client(CLOSE, b""),
        LIMIT,
        vec![Message::Close(None)],
        None,
    );
    check(
        "7.3.2 1-byte close",
        &client(CLOSE, &[0x03]),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "7.3.3 close with code",
        &client(CLOSE, &[0x03, 0xe8]),
        LIMIT,
        vec![Message::Close(Some((CloseCode::NORMAL, String::new())))],
        None,
    );
    let mut reason = vec![0x03, 0xe8];
    reason.extend_from_slice("bye ✓".as_bytes());
    check(
        "7.3.4 close with reason",
        &client(CLOSE, &reason),
        LIMIT,
        vec![Message::Close(Some((CloseCode::NORMAL, "bye ✓".into())))],
        None,
    );
    let mut long = vec![0x03, 0xe8];
    long.extend_from_slice(&[b'*'; 123]);
    check(
        "7.3.5 close reason 123",
        &client(CLOSE, &long),
        LIMIT,
        vec![Message::Close(Some((CloseCode::NORMAL, "*".repeat(123))))],
        None,
    );
    long.push(b'*');
    check(
        "7.3.6 close payload 126",
        &client(CLOSE, &long),
        LIMIT,
        vec![],
        Some(1002),
    );
    check(
        "7.5.1 close reason not UTF-8",
        &client(
            CLOSE,
            &[
                0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed,
                0xa0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
        ),
        LIMIT,
        vec![],
        Some(1007),
    );
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        check(
            &format!("7.7 valid code {code}"),
            &client(CLOSE, &code.to_be_bytes()),
            LIMIT,
            vec![Message::Close(Some((CloseCode(code), String::new())))],
            None,
        );
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        check(
            &format!("7.9 invalid code {code}"),
            &client(CLOSE, &code.to_be_bytes()),
            LIMIT,
            vec![],
            Some(1002),
        );
    }
    // 7.1.x: nothing after a close is read, whether data, ping or garbage.
    let after = cat(&[
        client(FIN_TEXT, b"a"),
        client(CLOSE, &[0x03, 0xe8]),
        client(FIN_TEXT, b"b"),
        client(PING, b""),
        vec![0xff; 10],
    ]);
    check(
        "7.1 data after close",
        &after,
        LIMIT,
        vec![
            text("a"),
            Message::Close(Some((CloseCode::NORMAL, String::new()))),
        ],
        None,
    );
}

/// Masking (§5.3): client frames must be masked; each frame's key applies from its own start.
#[test]
fn masking() {
    check("unmasked", &[0x81, 0x01, b'a'], LIMIT, vec![], Some(1002));
    let mut two = client(TEXT, b"abc");
    let mut second = client(FIN_CONT, b"defgh");
    second[2..6].copy_from_slice(&[0, 0, 0, 0]); // a zero mask: the payload is as sent
    second[6..].copy_from_slice(b"defgh");
    two.extend(second);
    check("per-frame masks", &two, LIMIT, vec![text("abcdefgh")], None);
}

/// Size limits (Autobahn 9.x shapes, cut to the protocol's 16 KiB): at the limit is fine,
/// one byte over fails with 1009 from the header alone; fragments count together; and the
/// peer's lengths are never added unchecked (issue #8 defect 2).
#[test]
fn limits() {
    let at = "a".repeat(LIMIT);
    check(
        "at the limit",
        &client(FIN_TEXT, at.as_bytes()),
        LIMIT,
        vec![text(&at)],
        None,
    );
    check(
        "over the limit",
        &client(FIN_TEXT, &vec![b'a'; LIMIT + 1]),
        LIMIT,
        vec![],
        Some(1009),
    );
    check(
        "binary over, 64-bit length",
        &client(FIN_BINARY, &vec![0u8; 70_000]),
        LIMIT,
        vec![],
        Some(1009),
    );
    check(
        "fragments together over the limit",
        &cat(&[
            client(TEXT, &vec![b'a'; 10_000]),
            client(FIN_CONT, &vec![b'a'; 10_000]),
        ]),
        LIMIT,
        vec![],
        Some(1009),
    );
    check(
        "fragments together at the limit",
        &cat(&[
            client(TEXT, &vec![b'a'; 10_000]),
            client(FIN_CONT, &vec![b'a'; LIMIT - 10_000]),
        ]),
        LIMIT,
        vec![text(&at)],
        None,
    );
    // Refused on the header, before the payload has arrived.
    let header = &client(FIN_TEXT, &vec![b'a'; 20_000])[..8];
    let mut r = FrameReader::new(LIMIT);
    r.feed(header);
    assert_eq!(r.next_message().unwrap_err().code, CloseCode::TOO_BIG);
    // Defect 2: a 1-byte fragment, then a continuation claiming 2^64 - 1 bytes.
    let mut bytes = vec![0x01, 0x81, 0, 0, 0, 0, b'a', 0x80, 0xff];
    bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    check("2^64-1 continuation", &bytes, LIMIT, vec![], Some(1002));
    // The largest legal 64-bit length after a fragment: 1009, no overflow.
    let mut bytes = vec![0x01, 0x81, 0, 0, 0, 0, b'a', 0x80, 0xff];
    bytes.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    check("2^63-1 continuation", &bytes, LIMIT, vec![], Some(1009));
}

#[test]
fn an_idle_reader_holds_no_buffer() {
    let mut r = FrameReader::new(LIMIT);
    r.feed(&cat(&[
        client(TEXT, "héllo".as_bytes()),
        client(FIN_CONT, &[b'x'; 200]),
    ]));
    assert!(matches!(r.next_message(), Ok(Some(Message::Text(_)))));
    assert_eq!(r.next_message(), Ok(None));
    assert_eq!(r.buffered(), 0);
}

#[test]
fn frames_behind_the_handshake_are_read() {
    let mut r = FrameReader::from_partially_read(&client(FIN_TEXT, b"early"), LIMIT);
    assert_eq!(r.next_message(), Ok(Some(text("early"))));
}

/// Found by fuzzing: with a large limit, a header announcing a huge length must not turn
/// into a huge allocation before the bytes arrive.
#[test]
fn an_announced_length_is_not_allocated_ahead() {
    let mut r = FrameReader::new(usize::MAX);
    let mut header = vec![FIN_TEXT, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header.extend_from_slice(b"abc");
    r.feed(&header);
    assert_eq!(r.next_message(), Ok(None));
    assert!(r.buffered() <= 64 * 1024 + 64, "{}", r.buffered());
}

#[test]
fn unmasked_frames_split_and_lengths_are_checked() {
    let mut bytes = Vec::new();
    encode(&mut bytes, OpCode::Text, b"hi");
    encode(&mut bytes, OpCode::Ping, b"");
    encode(&mut bytes, OpCode::Text, &[b'x'; 300]);
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let (frames, used) = decode_unmasked(&bytes);
    assert_eq!(
        used, whole,
        "the frame claiming 2^64-1 bytes is left, not trusted"
    );
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0], (OpCode::Text, &b"hi"[..]));
    assert_eq!(frames[1], (OpCode::Ping, &b""[..]));
    assert_eq!(frames[2].1.len(), 300);
}
