//! Checks shared by the publish targets (`client_frame`, `publish_body`).

use app::protocol::{
    parse_publish, validate_account_name, Payload, MAX_AUTHOR_CHARS, MAX_CHAT_BODY_CHARS,
    MAX_FEED_BODY_CHARS, MAX_FEED_TITLE_CHARS, MAX_SYMBOL_CHARS,
};

/// A text field that passed validation: trimmed, not empty, within its limit, and free of
/// control characters (bodies may keep newlines and tabs).
fn check_text(name: &str, v: &str, max: usize, multiline: bool) {
    assert!(!v.is_empty(), "{name} empty");
    assert_eq!(v, v.trim(), "{name} not trimmed");
    assert!(v.chars().count() <= max, "{name} over {max} characters");
    assert!(
        v.chars()
            .all(|c| !c.is_control() || (multiline && (c == '\n' || c == '\t'))),
        "{name} holds a control character: {v:?}"
    );
}

/// What validation promises about an accepted payload.
pub fn check_valid(p: &Payload) {
    match p {
        Payload::Feed(f) => {
            check_text("title", &f.title, MAX_FEED_TITLE_CHARS, false);
            check_text("body", &f.body, MAX_FEED_BODY_CHARS, true);
            check_text("author", &f.author, MAX_AUTHOR_CHARS, false);
        }
        Payload::Chat(c) => {
            check_text("author", &c.author, MAX_AUTHOR_CHARS, false);
            check_text("body", &c.body, MAX_CHAT_BODY_CHARS, true);
        }
        Payload::Ticker(t) => {
            check_text("symbol", &t.symbol, MAX_SYMBOL_CHARS, false);
            assert!(t
                .symbol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
            assert!(t.price.is_finite() && t.price > 0.0, "price {}", t.price);
            assert!(t.change.is_finite(), "change {}", t.change);
            if let Some(open) = t.open {
                assert!(open.is_finite() && open > 0.0, "open {open}");
            }
        }
        Payload::Lab(_) => {}
        Payload::Notifications(n) => check_text("text", &n.text, MAX_CHAT_BODY_CHARS, true),
        Payload::Presence(p) => assert!(
            validate_account_name(&p.user).is_ok(),
            "presence of {:?}",
            p.user
        ),
    }
}

/// serde_json's default float parsing is best effort (the `float_roundtrip` feature makes it
/// exact): a number read back may be one unit in the last place off.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= a.abs().max(b.abs()) * 4.0 * f64::EPSILON
}

/// The same payload, floats compared to within rounding.
pub fn assert_same(a: &Payload, b: &Payload) {
    match (a, b) {
        (Payload::Ticker(x), Payload::Ticker(y)) => {
            assert_eq!(x.symbol, y.symbol);
            assert!(
                close(x.price, y.price),
                "price {} became {}",
                x.price,
                y.price
            );
            assert!(
                close(x.change, y.change),
                "change {} became {}",
                x.change,
                y.change
            );
        }
        _ => assert_eq!(a, b),
    }
}

/// An accepted payload serialises (as stored and sent to subscribers) to a body that is
/// accepted again, unchanged.
pub fn check_round_trip(p: &Payload) {
    let json = serde_json::to_string(p).expect("a payload serialises");
    match parse_publish(json.as_bytes()) {
        Ok(again) => assert_same(p, &again),
        Err(e) => panic!("re-serialised payload refused: {e:?}\n{json}"),
    }
}
