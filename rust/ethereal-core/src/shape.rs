//! One iterative pass over a JSON document's structure: its nesting depth and
//! the first top-level key that appears twice.
//!
//! Why: a body with `"model"` twice is priced and authorised on one value by the
//! gateway while the upstream may act on another, so such bodies are refused; and
//! the estimator's parser must refuse, not overflow, a document nested deeper than
//! the gateway accepts. The scan keeps no per-level state (depth is a counter), so
//! no input can exhaust the stack, and it allocates only for top-level keys.

use std::collections::HashSet;
use std::fmt;

/// The deepest nesting the gateway accepts: orjson's own limit, so a body the
/// Python side parsed is never refused here.
pub const MAX_DEPTH: usize = 1024;

/// What the scan found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    /// Deepest nesting of arrays and objects (`{}` is 1, a scalar 0).
    pub max_depth: usize,
    /// The first key that occurs twice in the top-level object, unescaped.
    pub duplicate_key: Option<String>,
    /// Byte range of the value of the top-level key asked for by [`scan_locate`]
    /// (its first occurrence), whitespace excluded.
    pub located: Option<(usize, usize)>,
}

/// The document is not well-formed enough to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// A string never closes, or brackets do not match.
    Malformed(usize),
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(at) => write!(f, "malformed JSON near byte {at}"),
        }
    }
}

impl std::error::Error for ShapeError {}

/// Scan `body` once. Tolerates anything between tokens (it is a structure scan,
/// not a validator: the caller has parsed or will parse the document), but
/// refuses unbalanced brackets and unterminated strings.
///
/// # Errors
/// [`ShapeError::Malformed`] for an unterminated string or unbalanced brackets.
pub fn scan(body: &[u8]) -> Result<Shape, ShapeError> {
    scan_locate(body, None)
}

/// [`scan`], also finding where the value of the top-level key `locate` lies,
/// so a caller can replace it without re-serialising the document.
///
/// # Errors
/// [`ShapeError::Malformed`] for an unterminated string or unbalanced brackets.
pub fn scan_locate(body: &[u8], locate: Option<&str>) -> Result<Shape, ShapeError> {
    // `stack` only needs to tell `{` from `[` to match the closers: one bit per
    // level, packed into bytes, so even a hostile depth costs depth/8 bytes.
    let mut kinds: Vec<u8> = Vec::new();
    let mut depth = 0usize;
    let mut shape = Shape::default();
    let mut top_object = false; // the document's root is an object
    let mut expect_key = false; // at depth 1 of the root object, the next string is a key
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    // 0: not yet; 1: the key was read, its value follows the colon; 2: inside the value
    let mut locating = 0u8;
    let mut value_start = 0usize;
    let mut i = 0usize;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let end = string_end(body, i + 1).ok_or(ShapeError::Malformed(i))?;
                if depth == 1 && top_object && expect_key {
                    expect_key = false;
                    let raw = &body[i + 1..end];
                    let key = unescape_key(raw);
                    if shape.located.is_none()
                        && locating == 0
                        && locate.is_some_and(|k| k.as_bytes() == key.as_slice())
                    {
                        locating = 1;
                    }
                    if shape.duplicate_key.is_none() && !seen.insert(key.clone()) {
                        shape.duplicate_key = Some(String::from_utf8_lossy(&key).into_owned());
                    }
                }
                i = end + 1;
                continue;
            }
            open @ (b'{' | b'[') => {
                if depth == 0 && open == b'{' && shape.max_depth == 0 {
                    top_object = true;
                }
                push_kind(&mut kinds, depth, open == b'{');
                depth += 1;
                shape.max_depth = shape.max_depth.max(depth);
                if depth == 1 && open == b'{' {
                    expect_key = true;
                }
            }
            close @ (b'}' | b']') => {
                if depth == 0 || kind_at(&kinds, depth - 1) != (close == b'}') {
                    return Err(ShapeError::Malformed(i));
                }
                if depth == 1 && locating == 2 {
                    shape.located = Some(value_span(body, value_start, i));
                    locating = 3;
                }
                depth -= 1;
            }
            b':' if depth == 1 && locating == 1 => {
                locating = 2;
                value_start = i + 1;
            }
            b',' if depth == 1 && top_object => {
                expect_key = true;
                if locating == 2 {
                    shape.located = Some(value_span(body, value_start, i));
                    locating = 3;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err(ShapeError::Malformed(body.len()));
    }
    Ok(shape)
}

/// `[start, end)` with surrounding JSON whitespace removed.
fn value_span(body: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    while start < end && ws(body[start]) {
        start += 1;
    }
    while end > start && ws(body[end - 1]) {
        end -= 1;
    }
    (start, end)
}

fn push_kind(kinds: &mut Vec<u8>, level: usize, is_object: bool) {
    let (byte, bit) = (level / 8, level % 8);
    if kinds.len() <= byte {
        kinds.push(0);
    }
    if let Some(b) = kinds.get_mut(byte) {
        if is_object {
            *b |= 1 << bit;
        } else {
            *b &= !(1 << bit);
        }
    }
}

fn kind_at(kinds: &[u8], level: usize) -> bool {
    kinds.get(level / 8).is_some_and(|b| b & (1 << (level % 8)) != 0)
}

/// Index of the quote closing a string whose contents start at `from`.
fn string_end(body: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let rel = memchr::memchr2(b'"', b'\\', body.get(from..)?)?;
        let at = from + rel;
        if body[at] == b'"' {
            return Some(at);
        }
        from = at + 2; // skip the escaped character (for \uXXXX the hex digits are plain)
    }
}

/// A key's bytes with JSON escapes resolved, so `"model"` and `"mod\u0065l"` compare equal.
fn unescape_key(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    // invalid escapes keep the raw bytes: two raw spellings still compare as themselves
    serde_json::from_slice::<String>(&quoted).map_or_else(|_| raw.to_vec(), String::into_bytes)
}

/// What a request body may ask that its reservation prices (`metering/reserve.py`): one pass
/// over the bytes, so a request that asks none of it is never parsed a second time. Each is a
/// JSON string as it starts (`"document"`, `"web_search_…"`); `MARK_ESCAPED` when a `\u`
/// escape could spell any of them otherwise.
pub const MARK_ESCAPED: u8 = 1;
pub const MARK_DOCUMENT: u8 = 1 << 1;
pub const MARK_CACHE_CONTROL: u8 = 1 << 2;
pub const MARK_SPEED: u8 = 1 << 3;
pub const MARK_GEO: u8 = 1 << 4;
pub const MARK_WEB: u8 = 1 << 5;

/// The name after the quote, by its first byte (one compare for most quotes of a body).
fn mark_of(rest: &[u8]) -> u8 {
    let (needle, bit): (&[u8], u8) = match rest.first() {
        Some(b'd') => (b"document\"", MARK_DOCUMENT),
        Some(b'c') => (b"cache_control\"", MARK_CACHE_CONTROL),
        Some(b's') => (b"speed\"", MARK_SPEED),
        Some(b'i') => (b"inference_geo\"", MARK_GEO),
        Some(b'w') => (b"web_", MARK_WEB),
        _ => return 0,
    };
    if rest.starts_with(needle) {
        bit
    } else {
        0
    }
}

/// The `MARK_*` bits of `body` (a superset is fine: a bit only sends the caller to look).
#[must_use]
pub fn markers(body: &[u8]) -> u8 {
    let mut found = 0u8;
    for at in memchr::memchr2_iter(b'"', b'\\', body) {
        let rest = &body[at + 1..];
        if body[at] == b'\\' {
            if rest.first() == Some(&b'u') {
                found |= MARK_ESCAPED;
            }
            continue;
        }
        found |= mark_of(rest);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_what_a_body_asks_and_nothing_else() {
        let plain = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"speed document web"}]}"#;
        assert_eq!(markers(plain), 0);
        let all = br#"{"speed":"fast","inference_geo":"us","tools":[{"type":"web_search_20250305"}],
            "messages":[{"role":"user","content":[{"type":"document","cache_control":{"type":"ephemeral"}}]}]}"#;
        assert_eq!(
            markers(all),
            MARK_DOCUMENT | MARK_CACHE_CONTROL | MARK_SPEED | MARK_GEO | MARK_WEB
        );
        assert_eq!(markers(br#"{"a":"x\u0041"}"#), MARK_ESCAPED);
        assert_eq!(markers(br#"{"a":"\\n"}"#), 0);
        assert_eq!(markers(br#"{"a":"\"#), 0);
        assert_eq!(markers(b"\""), 0);
        assert_eq!(markers(b""), 0);
    }

    fn dup(body: &str) -> Option<String> {
        scan(body.as_bytes()).ok().and_then(|s| s.duplicate_key)
    }

    #[test]
    fn duplicate_top_level_keys() {
        assert_eq!(dup(r#"{"model":"a","model":"b"}"#), Some("model".into()));
        assert_eq!(dup(r#"{"model":"a","mod\u0065l":"b"}"#), Some("model".into()));
        assert_eq!(dup(r#"{"model":"a","x":{"model":"b","model":"c"}}"#), None);
        assert_eq!(dup(r#"{"a":["a","a"],"b":"a"}"#), None);
        assert_eq!(dup(r#"{"a\"":1,"a":2}"#), None);
        assert_eq!(dup(r#"{ "a" : 1 , "b" : { "a" : 2 } , "a" : 3 }"#), Some("a".into()));
        assert_eq!(dup(r#"["a","a"]"#), None);
    }

    #[test]
    fn depth() {
        assert_eq!(scan(b"1").map(|s| s.max_depth), Ok(0));
        assert_eq!(scan(b"{}").map(|s| s.max_depth), Ok(1));
        assert_eq!(scan(br#"{"a":[{"b":"]]]"}]}"#).map(|s| s.max_depth), Ok(3));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(scan(deep.as_bytes()).map(|s| s.max_depth), Ok(100_000));
    }

    #[test]
    fn locates_a_top_level_value() {
        let at = |body: &str| {
            scan_locate(body.as_bytes(), Some("model"))
                .ok()
                .and_then(|s| s.located)
                .map(|(a, b)| body[a..b].to_string())
        };
        assert_eq!(at(r#"{"model":"a","x":1}"#).as_deref(), Some(r#""a""#));
        assert_eq!(at(r#"{ "x" : {"model":"no"} , "model" : "b" }"#).as_deref(), Some(r#""b""#));
        assert_eq!(at(r#"{"m\u006fdel": [1, {"model":2}] }"#).as_deref(), Some(r#"[1, {"model":2}]"#));
        assert_eq!(at(r#"{"model":"a,}"}"#).as_deref(), Some(r#""a,}""#));
        assert_eq!(at(r#"{"x":"model"}"#), None);
        assert_eq!(at(r#"["model", 1]"#), None);
    }

    #[test]
    fn malformed() {
        assert!(scan(b"{\"a\":\"b}").is_err());
        assert!(scan(b"[}").is_err());
        assert!(scan(b"[[]").is_err());
        assert!(scan(b"]").is_err());
        assert!(scan(b"\"\\").is_err());
    }
}
