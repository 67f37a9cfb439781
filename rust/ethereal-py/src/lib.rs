//! `ethereal._native`: thin Python bindings over `ethereal-core`.
//!
//! Called once per network chunk; returns ints and a few strings, never
//! per-event Python objects (DESIGN §3).

mod translators;
mod usage;

use ethereal_core::{shape, sse, tap, tokens};
use pyo3::exceptions::PyValueError;
use pyo3::marker::Ungil;
use pyo3::prelude::*;

/// Inputs at least this large are processed with the GIL released; below
/// it, detaching costs more than it frees.
const DETACH_BYTES: usize = 64 * 1024;

/// `f()` over an input of `len` bytes, with the GIL released if it is large.
fn maybe_detached<T: Ungil, F: Ungil + FnOnce() -> T>(py: Python<'_>, len: usize, f: F) -> T {
    if len >= DETACH_BYTES {
        py.detach(f)
    } else {
        f()
    }
}

/// A bool as Python writes it (for `repr()`).
fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Core errors → Python exceptions, in one place.
mod errors {
    use super::{PyErr, PyValueError};

    pub fn estimate(e: &ethereal_core::EstimateError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Usage tap over an Anthropic Messages SSE stream. Feed it every network
/// chunk as it passes through, call `finish()` at upstream EOF, then read
/// what to bill (`usage()`) and how the stream went (`state()`).
#[pyclass(module = "ethereal._native")]
#[derive(Default)]
struct StreamTap {
    inner: tap::StreamTap,
}

#[pymethods]
impl StreamTap {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Feed one chunk; returns the number of events it completed.
    fn feed(&mut self, py: Python<'_>, chunk: &[u8]) -> usize {
        let inner = &mut self.inner;
        maybe_detached(py, chunk.len(), || inner.feed(chunk))
    }

    /// Upstream EOF: an unterminated trailing event is discarded.
    fn finish(&mut self) {
        self.inner.finish();
    }

    /// What to bill, as `ethereal.usage.Usage`.
    fn usage(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let tracker = self.inner.tracker();
        usage::to_python(py, &tracker.usage(), tracker.model.as_deref())
    }

    fn state(&self) -> usage::StreamState {
        usage::StreamState::of(self.inner.tracker(), self.inner.leftover())
    }

    fn __repr__(&self) -> String {
        let u = self.inner.usage();
        format!(
            "StreamTap(events={}, input={}, output={}, exact={})",
            self.inner.tracker().events,
            u.input_tokens,
            u.output_tokens,
            py_bool(u.exact),
        )
    }
}

/// Estimated input tokens of a raw Messages request body, for a model of
/// tokenizer generation `tokenizer`, image tier `image_tier` and a tool-use
/// system prompt of `tool_prompt = (auto, any)` tokens (Anthropic's documented
/// 346 / 313 when omitted); `keep_thinking`: the model keeps earlier turns' thinking.
#[pyfunction]
#[pyo3(signature = (body, tokenizer=1, image_tier=1, tool_prompt=None, keep_thinking=false))]
fn estimate_tokens(
    py: Python<'_>,
    body: &[u8],
    tokenizer: u8,
    image_tier: u8,
    tool_prompt: Option<(u32, u32)>,
    keep_thinking: bool,
) -> PyResult<u64> {
    if !(1..=2).contains(&tokenizer) || !(1..=2).contains(&image_tier) {
        return Err(PyValueError::new_err(
            "tokenizer and image_tier are generations 1 or 2",
        ));
    }
    let defaults = tokens::Generation::default();
    let (auto, any) = tool_prompt.unwrap_or((defaults.tool_prompt_auto, defaults.tool_prompt_any));
    let gen = tokens::Generation {
        tokenizer,
        image_tier,
        tool_prompt_auto: auto,
        tool_prompt_any: any,
        keep_thinking,
    };
    maybe_detached(py, body.len(), || tokens::estimate_tokens_for(body, gen))
        .map_err(|e| errors::estimate(&e))
}

/// Estimated tokens of a piece of text (English ≈ chars / 4).
#[pyfunction]
fn estimate_text_tokens(text: &str) -> u64 {
    tokens::estimate_text_tokens(text)
}

/// `(max_depth, duplicate_top_level_key, located value span)`.
type ShapeTuple = (usize, Option<String>, Option<(usize, usize)>);

/// `(max_depth, duplicate_top_level_key, span)` of a JSON document, where
/// `span` is the `(start, end)` byte range of the value of the top-level key
/// `locate` (or `None`); `ValueError` when brackets or strings do not balance.
#[pyfunction]
#[pyo3(signature = (body, locate=None))]
fn json_shape(
    py: Python<'_>,
    body: &[u8],
    locate: Option<&str>,
) -> PyResult<ShapeTuple> {
    maybe_detached(py, body.len(), || shape::scan_locate(body, locate))
        .map(|s| (s.max_depth, s.duplicate_key, s.located))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The `MARK_*` bits of what a request body may ask that its reservation prices
/// (`shape::markers`): one pass instead of a search per name.
#[pyfunction]
fn reserve_markers(py: Python<'_>, body: &[u8]) -> u8 {
    maybe_detached(py, body.len(), || shape::markers(body))
}

/// Decode a whole SSE stream into `(event, data)` pairs (for tests).
#[pyfunction]
fn parse_sse(data: &[u8]) -> Vec<(String, String)> {
    sse::parse_all(data)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StreamTap>()?;
    m.add_class::<usage::StreamState>()?;
    translators::register(m)?;
    m.add_function(wrap_pyfunction!(estimate_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(estimate_text_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(parse_sse, m)?)?;
    m.add_function(wrap_pyfunction!(json_shape, m)?)?;
    m.add_function(wrap_pyfunction!(reserve_markers, m)?)?;
    m.add("MAX_JSON_DEPTH", shape::MAX_DEPTH)?;
    m.add("MARK_ESCAPED", shape::MARK_ESCAPED)?;
    m.add("MARK_DOCUMENT", shape::MARK_DOCUMENT)?;
    m.add("MARK_CACHE_CONTROL", shape::MARK_CACHE_CONTROL)?;
    m.add("MARK_SPEED", shape::MARK_SPEED)?;
    m.add("MARK_GEO", shape::MARK_GEO)?;
    m.add("MARK_WEB", shape::MARK_WEB)?;
    Ok(())
}
