//! Serde-free parsing of the event shapes that make up nearly all of a
//! stream, exactly as the API writes them (compact JSON in server key
//! order, optional padding spaces before the closing braces). Anything else —
//! another key order, other whitespace, an unknown delta — returns `None`
//! and goes through [`parse_event`](crate::event::parse_event), so the fast
//! path changes speed, never results (the tests compare both paths over the recorded corpus and
//! generated streams).
//!
//! Recognised:
//! - whole events framed as the API frames them (`event: X\ndata: Y\n\n`),
//!   taken from the chunk without the SSE decoder's copy;
//! - `content_block_delta` with a `text`/`thinking`/`partial_json`/`signature`
//!   string (borrowed when it has no escapes, else unescaped here),
//!   `content_block_stop`, `ping` and `message_stop`;
//! - `content_block_start` of a block that arrives complete and that no
//!   translation shows (`*_tool_result`: web search/fetch results are tens of
//!   kilobytes each): only its kind is read. The event's `raw` is then an
//!   empty object, not the block — nothing downstream of the translators
//!   reads it, and the usage tracker needs only the kind.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde_json::value::RawValue;

use crate::event::{BlockStart, Delta, Event};

const DELTA: &str = r#"{"type":"content_block_delta","index":"#;
const START: &str = r#"{"type":"content_block_start","index":"#;
const STOP: &str = r#"{"type":"content_block_stop","index":"#;

/// One whole event in the API's framing at the start of `buf`:
/// `(event name, data, bytes used)`.
pub(crate) fn frame(buf: &[u8]) -> Option<(&str, &[u8], usize)> {
    let rest = buf.strip_prefix(b"event: ")?;
    let end = memchr::memchr2(b'\n', b'\r', rest)?;
    if rest[end] != b'\n' || end == 0 {
        return None;
    }
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    let line = rest[end + 1..].strip_prefix(b"data: ")?;
    let len = memchr::memchr2(b'\n', b'\r', line)?;
    if line[len] != b'\n' || line.get(len + 1) != Some(&b'\n') {
        return None;
    }
    Some((name, &line[..len], 7 + end + 1 + 6 + len + 2))
}

/// The small events: deltas, block stops, pings, `message_stop`.
pub(crate) fn event<'a>(name: &str, data: &'a str) -> Option<Event<'a>> {
    match name {
        "content_block_delta" => delta(data),
        "content_block_stop" => {
            let (index, rest) = index(data.strip_prefix(STOP)?)?;
            closing(rest, 1)?;
            Some(Event::ContentBlockStop { index })
        }
        "ping" => (data == r#"{"type": "ping"}"#).then_some(Event::Ping),
        "message_stop" => {
            closing(data.strip_prefix(r#"{"type":"message_stop""#)?, 1).map(|()| Event::MessageStop)
        }
        _ => None,
    }
}

fn delta(data: &str) -> Option<Event<'_>> {
    let (index, rest) = index(data.strip_prefix(DELTA)?)?;
    let rest = rest.strip_prefix(r#","delta":{"type":""#)?;
    let (kind, rest) = rest.split_once('"')?;
    let field = match kind {
        "text_delta" => r#","text":""#,
        "thinking_delta" => r#","thinking":""#,
        "input_json_delta" => r#","partial_json":""#,
        "signature_delta" => r#","signature":""#,
        _ => return None,
    };
    let (text, rest) = string(rest.strip_prefix(field)?)?;
    closing(rest, 2)?;
    let delta = match kind {
        "text_delta" => Delta::Text(text),
        "thinking_delta" => Delta::Thinking(text),
        "input_json_delta" => Delta::InputJson(text),
        _ => Delta::Signature(text),
    };
    Some(Event::ContentBlockDelta { index, delta })
}

/// A large `*_tool_result` block start, read no further than its kind
/// (the rest is not parsed).
pub(crate) fn complete_block<'a>(name: &str, data: &'a [u8]) -> Option<Event<'a>> {
    if name != "content_block_start" || data.len() <= 256 {
        return None;
    }
    let rest = data.strip_prefix(START.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (index, rest) = index(std::str::from_utf8(&rest[..digits]).ok()?)?;
    debug_assert!(rest.is_empty());
    let rest = data[START.len() + digits..].strip_prefix(br#","content_block":{"type":""#)?;
    let kind = std::str::from_utf8(&rest[..memchr::memchr(b'"', rest)?]).ok()?;
    if !kind.ends_with("_tool_result") || data.trim_ascii_end().last() != Some(&b'}') {
        return None;
    }
    Some(Event::ContentBlockStart(BlockStart {
        index,
        kind: Cow::Borrowed(kind),
        id: None,
        name: None,
        raw: empty_object()?,
    }))
}

fn empty_object() -> Option<&'static RawValue> {
    static EMPTY: OnceLock<Option<Box<RawValue>>> = OnceLock::new();
    EMPTY
        .get_or_init(|| RawValue::from_string("{}".to_owned()).ok())
        .as_deref()
}

/// A decimal index (no sign, no leading zeros beyond a lone 0) and what follows.
fn index(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 || (digits > 1 && s.starts_with('0')) {
        return None;
    }
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

/// The body of a JSON string whose opening quote was consumed, and what
/// follows its closing quote.
fn string(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    loop {
        i += memchr::memchr2(b'"', b'\\', &bytes[i..])?;
        if bytes[i] == b'"' {
            break;
        }
        escaped = true;
        i += 2; // the escape and the character after it (`\uXXXX` digits hold no quote)
        if i > bytes.len() {
            return None;
        }
    }
    let (body, rest) = (&s[..i], &s[i + 1..]);
    if body.bytes().any(|b| b < 0x20) {
        return None; // not valid JSON: let serde say so
    }
    let text = if escaped {
        Cow::Owned(unescape(body)?)
    } else {
        Cow::Borrowed(body)
    };
    Some((text, rest))
}

/// The value of a JSON string body with escapes; `None` for an invalid
/// escape or a lone surrogate, which `serde_json` then reports as
/// malformed, exactly as without the fast path.
fn unescape(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let esc = rest.as_bytes().get(pos + 1)?;
        // a multi-byte character after the backslash is no escape, and slicing past
        // one byte would split it (found by tests/fuzz_props.rs)
        if !esc.is_ascii() {
            return None;
        }
        rest = &rest[pos + 2..];
        out.push(match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (unit, after) = hex4(rest)?;
                rest = after;
                if (0xD800..0xDC00).contains(&unit) {
                    let (low, after) = after.strip_prefix("\\u").and_then(hex4)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    rest = after;
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(unit)? // None for a lone low surrogate
                }
            }
            _ => return None,
        });
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(s: &str) -> Option<(u32, &str)> {
    let digits = s.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(digits, 16).ok()?, &s[4..]))
}

/// `depth` closing braces, each optionally preceded by spaces, then only whitespace.
fn closing(mut s: &str, depth: usize) -> Option<()> {
    for _ in 0..depth {
        s = s.trim_start_matches(' ').strip_prefix('}')?;
    }
    s.trim().is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;

    fn delta_event(kind: usize, encoded: &str, pad: usize) -> String {
        let (dkind, field) = [
            ("text_delta", "text"),
            ("thinking_delta", "thinking"),
            ("input_json_delta", "partial_json"),
            ("signature_delta", "signature"),
        ][kind % 4];
        format!(
            r#"{{"type":"content_block_delta","index":3,"delta":{{"type":"{dkind}","{field}":{encoded}}}{}}}"#,
            " ".repeat(pad)
        )
    }

    fn same_as_serde(data: &str) {
        let fast = event("content_block_delta", data);
        match parse_event("content_block_delta", data) {
            Ok(slow) => {
                if let Some(fast) = fast {
                    assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{data}");
                }
            }
            Err(_) => assert!(fast.is_none(), "fast path accepted {data}"),
        }
    }

    #[test]
    fn fast_small_events_agree_with_serde() {
        for (name, data, fast_ok) in [
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
                true,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":12       }"#,
                true,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":01}"#,
                false,
            ),
            (
                "content_block_stop",
                r#"{"index":1,"type":"content_block_stop"}"#,
                false,
            ),
            ("ping", r#"{"type": "ping"}"#, true),
            ("ping", r#"{"type":"ping"}"#, false),
            ("message_stop", r#"{"type":"message_stop"}"#, true),
            ("message_stop", r#"{"type":"message_stop"   }"#, true),
            ("message_stop", r#"{"type":"message_stop","x":1}"#, false),
        ] {
            let fast = event(name, data);
            assert_eq!(fast.is_some(), fast_ok, "{data}");
            if let Some(fast) = fast {
                let slow = parse_event(name, data).unwrap();
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{data}");
            }
        }
    }

    #[test]
    fn fast_delta_escape_vectors() {
        for body in [
            r#""a\/b\u00e9\ud83d\ude00\"\\\b\f\n\r\t""#,
            r#""\u0000\u001f""#,
            r#""plain""#,
            r#""""#,
            r#""\x""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud800\u0041""#,
            r#""\u12""#,
            r#""trailing\""#,
        ] {
            for kind in 0..4 {
                same_as_serde(&delta_event(kind, body, 0));
                same_as_serde(&delta_event(kind, body, 7));
            }
        }
        assert!(event("content_block_delta", &delta_event(0, r#""é\n""#, 3)).is_some());
    }

    proptest::proptest! {
        #[test]
        fn fast_delta_agrees_with_serde(text in ".*", kind in 0usize..4, pad in 0usize..16, ascii: bool) {
            let encoded = if ascii {
                let mut e = String::from("\"");
                for c in text.chars() {
                    if c.is_ascii() {
                        let j = serde_json::to_string(&c.to_string()).unwrap();
                        e.push_str(&j[1..j.len() - 1]);
                    } else {
                        for unit in c.encode_utf16(&mut [0; 2]) {
                            std::fmt::Write::write_fmt(&mut e, format_args!("\\u{unit:04x}")).unwrap();
                        }
                    }
                }
                e.push('"');
                e
            } else {
                serde_json::to_string(&text).unwrap()
            };
            let data = delta_event(kind, &encoded, pad);
            proptest::prop_assert!(event("content_block_delta", &data).is_some());
            same_as_serde(&data);
        }
    }
}
