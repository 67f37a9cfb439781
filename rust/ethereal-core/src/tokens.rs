//! Fast token estimates without a tokenizer.
//!
//! - The request entry points ([`estimate_tokens`], [`estimate_tokens_for`]):
//!   parse and bound the body, then [`crate::estimate`] prices it for the
//!   model's generation (calibrated on recorded requests).
//! - Output text for the stream tap ([`text_weight`]): weighted per character
//!   by script class, in units of 1/[`WEIGHT_SCALE`] token. Weights are
//!   additive, so the tap can sum the weight of many small deltas and round
//!   once at the end instead of rounding every delta up. Contract shared with
//!   the simulated upstream: plain English text costs about `chars / 4` tokens
//!   (letters and spaces weigh exactly a quarter).
//! - Image headers (PNG, GIF, WebP, JPEG) and the tier-1 image formula.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

pub use crate::estimate::Generation;

/// Weight units per token.
pub const WEIGHT_SCALE: u64 = 12;

/// Per-ASCII-byte weights.
const ASCII_WEIGHTS: [u8; 128] = ascii_weights();

const fn ascii_weights() -> [u8; 128] {
    let mut w = [5u8; 128]; // punctuation and symbols: tokenizers split these more
    let mut b = 0u8;
    while b < 128 {
        let i = b as usize;
        w[i] = if b.is_ascii_alphabetic() || b.is_ascii_whitespace() {
            3 // English words: ~4 chars per token
        } else if b.is_ascii_digit() {
            4 // digits group into shorter tokens than letters
        } else if b.is_ascii_control() {
            6
        } else {
            5
        };
        b += 1;
    }
    w
}

/// Weight of one non-ASCII character.
fn char_weight(c: char) -> u64 {
    match u32::from(c) {
        // Latin-1 supplement, Latin extended, IPA, combining marks: accented
        // Latin letters mostly merge into word tokens.
        0x80..=0x036F | 0x1E00..=0x1EFF => 4,
        // Greek, Cyrillic, Armenian, Hebrew, Arabic, Syriac…: alphabetic but
        // poorly covered by the vocabulary.
        0x0370..=0x07FF => 6,
        // General punctuation, symbols, arrows, box drawing, dingbats.
        // CJK radicals, kana, CJK ideographs, Yi, Hangul, compatibility and
        // fullwidth forms: about one token per character.
        0x2E80..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF => {
            12
        }
        // General punctuation and symbols, other BMP scripts (Indic, Thai,
        // Georgian, Ethiopic…): in between.
        0x0800..=0xFFFF => 8,
        // Supplementary planes: emoji, rare CJK.
        _ => 15,
    }
}

/// Text weight in units of 1/[`WEIGHT_SCALE`] token.
pub fn text_weight(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut total = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            total += u64::from(ASCII_WEIGHTS[usize::from(b)]);
            i += 1;
        } else {
            // `text` is valid UTF-8 and `i` is always on a char boundary here.
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            total += char_weight(c);
            i += c.len_utf8();
        }
    }
    total
}

/// Convert a weight to tokens, rounding up.
pub fn weight_to_tokens(weight: u64) -> u64 {
    weight.div_ceil(WEIGHT_SCALE)
}

/// Estimated token count of a piece of text (English ≈ chars / 4).
pub fn estimate_text_tokens(text: &str) -> u64 {
    weight_to_tokens(text_weight(text))
}

/// Tokens charged for an image of unknown size on a tier-1 model (Anthropic's cap).
pub const IMAGE_MAX_TOKENS: u64 = IMAGE_MAX_TOKENS_U32 as u64;
const IMAGE_MAX_TOKENS_U32: u32 = 1600;
/// Anthropic resizes images whose long edge exceeds this (tier 1).
const IMAGE_MAX_EDGE: f64 = 1568.0;

/// The request body could not be estimated.
#[derive(Debug)]
pub enum EstimateError {
    /// Not JSON at all.
    InvalidJson(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
    /// Nested deeper than [`crate::shape::MAX_DEPTH`] (the gateway refuses such bodies).
    TooDeep(usize),
}

impl fmt::Display for EstimateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson(e) => write!(f, "request body is not valid JSON: {e}"),
            Self::NotAnObject => f.write_str("request body must be a JSON object"),
            Self::TooDeep(depth) => write!(
                f,
                "request body is nested {depth} levels deep; at most {} are accepted",
                crate::shape::MAX_DEPTH
            ),
        }
    }
}

impl std::error::Error for EstimateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidJson(e) => Some(e),
            Self::NotAnObject | Self::TooDeep(_) => None,
        }
    }
}

/// Estimate the input tokens of a raw Messages API request body for a model of
/// the earlier tokenizer and image tier 1, with the documented tool-use prompt.
///
/// # Errors
/// [`EstimateError`] when the body is not a JSON object, or is nested deeper
/// than [`crate::shape::MAX_DEPTH`].
pub fn estimate_tokens(body: &[u8]) -> Result<u64, EstimateError> {
    estimate_tokens_for(body, Generation::default())
}

/// Estimate the input tokens of a raw Messages API request body for the model
/// `gen` describes (tokenizer generation, image tier, tool-use prompt).
///
/// # Errors
/// [`EstimateError`] when the body is not a JSON object, or is nested deeper
/// than [`crate::shape::MAX_DEPTH`].
pub fn estimate_tokens_for(body: &[u8], gen: Generation) -> Result<u64, EstimateError> {
    // serde_json's own limit (128) is far below what orjson accepts (1024): a body the
    // gateway parsed must be estimable. The iterative shape scan bounds the depth first,
    // so lifting serde_json's limit cannot let a hostile body exhaust the stack.
    match crate::shape::scan(body) {
        Ok(shape) if shape.max_depth > crate::shape::MAX_DEPTH => {
            return Err(EstimateError::TooDeep(shape.max_depth));
        }
        Ok(_) => {}
        // malformed: serde_json with its default depth limit says where, safely
        Err(_) => {
            return Err(EstimateError::InvalidJson(
                serde_json::from_slice::<serde::de::IgnoredAny>(body)
                    .err()
                    .unwrap_or_else(|| serde::de::Error::custom("unbalanced brackets")),
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).map_err(EstimateError::InvalidJson)?;
    de.end().map_err(EstimateError::InvalidJson)?;
    let Value::Object(req) = value else {
        return Err(EstimateError::NotAnObject);
    };
    Ok(crate::estimate::estimate_request(&req, gen))
}

/// Tokens for a `width` × `height` image after Anthropic's downscaling:
/// long edge at most 1568 px and at most ~1600 tokens (w·h/750).
pub fn image_tokens_for(width: u32, height: u32) -> u64 {
    if width == 0 || height == 0 {
        return IMAGE_MAX_TOKENS;
    }
    let (mut w, mut h) = (f64::from(width), f64::from(height));
    let long = w.max(h);
    if long > IMAGE_MAX_EDGE {
        let s = IMAGE_MAX_EDGE / long;
        w *= s;
        h *= s;
    }
    let area_cap = f64::from(IMAGE_MAX_TOKENS_U32) * 750.0;
    if w * h > area_cap {
        let s = (area_cap / (w * h)).sqrt();
        w *= s;
        h *= s;
    }
    // Bounded by IMAGE_MAX_TOKENS above, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let tokens = (w.round() * h.round() / 750.0).ceil() as u64;
    tokens.clamp(1, IMAGE_MAX_TOKENS)
}

/// How much of a base64 image to decode while looking for its size. JPEG
/// dimensions follow the EXIF block, which can be tens of KB.
const SNIFF_BYTES: usize = 256 * 1024;

/// Width and height of a base64 PNG, GIF, WebP or JPEG, from its header.
pub fn image_dimensions_b64(b64: &str) -> Option<(u32, u32)> {
    let head = base64_decode_prefix(b64, 64);
    if head.starts_with(b"\xFF\xD8") {
        return jpeg_dimensions(&base64_decode_prefix(b64, SNIFF_BYTES));
    }
    image_dimensions(&head)
}

/// Width and height from the first bytes of a PNG, GIF or WebP (or a JPEG, if
/// enough of it is given).
pub fn image_dimensions(d: &[u8]) -> Option<(u32, u32)> {
    let be32 = |at: usize| {
        d.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |at: usize| {
        d.get(at..at + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let le24 = |at: usize| {
        d.get(at..at + 3)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]))
    };
    if d.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some((be32(16)?, be32(20)?));
    }
    if d.starts_with(b"GIF87a") || d.starts_with(b"GIF89a") {
        return Some((le16(6)?, le16(8)?));
    }
    if d.starts_with(b"RIFF") && d.get(8..12) == Some(b"WEBP") {
        return match d.get(12..16)? {
            b"VP8 " => Some((le16(26)? & 0x3FFF, le16(28)? & 0x3FFF)),
            b"VP8L" => {
                let bits = d
                    .get(21..25)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            _ => None,
        };
    }
    if d.starts_with(b"\xFF\xD8") {
        return jpeg_dimensions(d);
    }
    None
}

fn jpeg_dimensions(d: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while *d.get(i)? != 0xFF {
            i += 1;
        }
        while *d.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *d.get(i)?;
        i += 1;
        match marker {
            0xD0..=0xD9 | 0x01 => continue, // standalone markers
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?]));
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let h = u16::from_be_bytes([*d.get(i + 3)?, *d.get(i + 4)?]);
            let w = u16::from_be_bytes([*d.get(i + 5)?, *d.get(i + 6)?]);
            return Some((u32::from(w), u32::from(h)));
        }
        if len < 2 {
            return None;
        }
        i += len;
    }
}

/// Decode up to about `max_out` bytes from the start of standard or URL-safe
/// base64, skipping whitespace and stopping at padding or the first invalid
/// character.
pub(crate) fn base64_decode_prefix(b64: &str, max_out: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((b64.len() / 4 * 3).min(max_out.saturating_add(3)));
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in b64.as_bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => break,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Truncation keeps exactly the decoded byte.
            #[allow(clippy::cast_possible_truncation)]
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
            if out.len() >= max_out {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_chars_over_four() {
        assert_eq!(estimate_text_tokens("abcd efgh ijk"), 4); // 13 chars → 3.25 → 4
        assert_eq!(estimate_text_tokens(&"word ".repeat(100)), 125);
    }

    #[test]
    fn cjk_is_one_per_char() {
        assert_eq!(estimate_text_tokens("日本語のテキスト"), 8);
    }

    #[test]
    fn weights_are_additive() {
        let a = "Hello, wörld ";
        let b = "— 你好";
        assert_eq!(
            text_weight(&format!("{a}{b}")),
            text_weight(a) + text_weight(b)
        );
    }

    #[test]
    fn base64_prefix() {
        assert_eq!(
            base64_decode_prefix("aGVsbG8gd29ybGQ=", 100),
            b"hello world"
        );
        assert_eq!(base64_decode_prefix("aGVsbG8gd29ybGQ=", 5), b"hello");
    }

    #[test]
    fn image_scaling() {
        assert_eq!(image_tokens_for(200, 200), 54); // 40000/750 = 53.3
        assert_eq!(image_tokens_for(1000, 1000), 1334);
        assert!(image_tokens_for(4000, 3000) <= IMAGE_MAX_TOKENS);
        assert!(image_tokens_for(4000, 3000) >= 1500);
        assert_eq!(image_tokens_for(0, 10), IMAGE_MAX_TOKENS);
    }

    #[test]
    fn rejects_non_object() {
        assert!(matches!(
            estimate_tokens(b"[1]"),
            Err(EstimateError::NotAnObject)
        ));
        assert!(matches!(
            estimate_tokens(b"{"),
            Err(EstimateError::InvalidJson(_))
        ));
    }

    fn nested(depth: usize) -> Vec<u8> {
        // the deep part sits in a tool_use input, which the estimator serialises
        format!(
            r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":[{{"type":"tool_use","name":"t","input":{{"x":{}{}}}}}]}}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    }

    #[test]
    fn any_depth_the_gateway_accepts() {
        // run on a thread with a small stack: the estimate must fit what a worker thread has
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| estimate_tokens(&nested(crate::shape::MAX_DEPTH - 6)).ok());
        let got = handle.ok().and_then(|h| h.join().ok()).flatten();
        assert!(got.is_some_and(|t| t > 0));
        assert!(matches!(
            estimate_tokens(&nested(100_000)),
            Err(EstimateError::TooDeep(_))
        ));
        // unbalanced and deep: an error, not a stack overflow
        let open = "[".repeat(1_000_000);
        assert!(matches!(
            estimate_tokens(open.as_bytes()),
            Err(EstimateError::InvalidJson(_))
        ));
    }
}
