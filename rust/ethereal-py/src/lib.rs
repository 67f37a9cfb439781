//! `ethereal._native`: thin Python bindings over `ethereal-core`.
//!
//! Called once per network chunk; returns ints and a few strings, never
//! per-event Python objects (DESIGN §3).

mod chat;

use ethereal_core::{sse, tap, tokens};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Inputs at least this large are processed with the GIL released; below
/// it, detaching costs more than it frees.
const DETACH_BYTES: usize = 64 * 1024;

/// Core errors → Python exceptions, in one place.
mod errors {
    use super::{PyErr, PyValueError};

    pub fn estimate(e: &ethereal_core::EstimateError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Usage tap over an Anthropic Messages SSE stream. Feed it every network
/// chunk as it passes through, call `finish()` at upstream EOF, then read
/// what to bill.
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
        if chunk.len() >= DETACH_BYTES {
            let inner = &mut self.inner;
            py.detach(|| inner.feed(chunk))
        } else {
            self.inner.feed(chunk)
        }
    }

    /// Upstream EOF: an unterminated trailing event is discarded.
    fn finish(&mut self) {
        self.inner.finish();
    }

    /// `(input, output, cache_creation_5m, cache_creation_1h, cache_read, exact)`.
    fn usage(&self) -> (u64, u64, u64, u64, u64, bool) {
        let u = self.inner.usage();
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_5m,
            u.cache_creation_1h,
            u.cache_read_input_tokens,
            u.exact,
        )
    }

    #[getter]
    fn input_tokens(&self) -> u64 {
        self.inner.usage().input_tokens
    }

    /// Billed output: `message_delta`'s count, or the estimate if it never came.
    #[getter]
    fn output_tokens(&self) -> u64 {
        self.inner.usage().output_tokens
    }

    /// Output estimated from the streamed content alone.
    #[getter]
    fn estimated_output_tokens(&self) -> u64 {
        self.inner.tracker().estimated_output_tokens()
    }

    /// All cache writes (5m + 1h).
    #[getter]
    fn cache_creation_input_tokens(&self) -> u64 {
        self.inner.tracker().cache_creation_total()
    }

    /// 5-minute cache writes; all writes when the split was not reported.
    #[getter]
    fn cache_creation_5m(&self) -> u64 {
        self.inner.usage().cache_creation_5m
    }

    #[getter]
    fn cache_creation_1h(&self) -> u64 {
        self.inner.usage().cache_creation_1h
    }

    #[getter]
    fn cache_read_input_tokens(&self) -> u64 {
        self.inner.usage().cache_read_input_tokens
    }

    /// The upstream sent the `cache_creation {5m, 1h}` object.
    #[getter]
    fn cache_split_reported(&self) -> bool {
        self.inner.tracker().cache_split_reported()
    }

    #[getter]
    fn stop_reason(&self) -> Option<&str> {
        self.inner.tracker().stop_reason.as_deref()
    }

    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.tracker().message_id.as_deref()
    }

    #[getter]
    fn model(&self) -> Option<&str> {
        self.inner.tracker().model.as_deref()
    }

    #[getter]
    fn error_type(&self) -> Option<&str> {
        self.inner.tracker().error_type.as_deref()
    }

    #[getter]
    fn error_message(&self) -> Option<&str> {
        self.inner.tracker().error_message.as_deref()
    }

    #[getter]
    fn saw_message_start(&self) -> bool {
        self.inner.tracker().saw_message_start
    }

    #[getter]
    fn saw_message_delta(&self) -> bool {
        self.inner.tracker().saw_message_delta
    }

    #[getter]
    fn saw_message_stop(&self) -> bool {
        self.inner.tracker().saw_message_stop
    }

    /// Events parsed so far, pings and unknown kinds included.
    #[getter]
    fn events(&self) -> u64 {
        self.inner.tracker().events
    }

    /// Events whose data was not JSON of the expected shape.
    #[getter]
    fn malformed_events(&self) -> u64 {
        self.inner.tracker().malformed_events
    }

    /// `finish()` found an unterminated line or event (the stream was cut).
    #[getter]
    fn truncated(&self) -> bool {
        self.inner.leftover().is_some_and(sse::Leftover::any)
    }

    fn __repr__(&self) -> String {
        let u = self.inner.usage();
        format!(
            "StreamTap(events={}, input={}, output={}, cache_5m={}, cache_1h={}, cache_read={}, exact={})",
            self.inner.tracker().events,
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_5m,
            u.cache_creation_1h,
            u.cache_read_input_tokens,
            if u.exact { "True" } else { "False" },
        )
    }
}

/// Estimated input tokens of a raw Messages request body.
#[pyfunction]
fn estimate_tokens(py: Python<'_>, body: &[u8]) -> PyResult<u64> {
    let result = if body.len() >= DETACH_BYTES {
        py.detach(|| tokens::estimate_tokens(body))
    } else {
        tokens::estimate_tokens(body)
    };
    result.map_err(|e| errors::estimate(&e))
}

/// Estimated tokens of a piece of text (English ≈ chars / 4).
#[pyfunction]
fn estimate_text_tokens(text: &str) -> u64 {
    tokens::estimate_text_tokens(text)
}

/// Decode a whole SSE stream into `(event, data)` pairs (for tests).
#[pyfunction]
fn parse_sse(data: &[u8]) -> Vec<(String, String)> {
    sse::parse_all(data)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StreamTap>()?;
    chat::register(m)?;
    m.add_function(wrap_pyfunction!(estimate_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(estimate_text_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(parse_sse, m)?)?;
    Ok(())
}
