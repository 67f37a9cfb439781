//! `ChatTranslator`: Anthropic SSE → `OpenAI` `chat.completion.chunk` SSE, with
//! the same `usage()` and `state()` as `StreamTap` so metering works identically.

use ethereal_core::openai_chat::{self, ChatOptions};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Inputs at least this large are translated with the GIL released.
const DETACH_BYTES: usize = 64 * 1024;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ChatTranslator>()
}

/// Translates one upstream stream. `feed()` every network chunk and send
/// what it returns; `finish()` at upstream EOF (or when the upstream
/// connection failed) and send that too.
#[pyclass(module = "ethereal._native")]
struct ChatTranslator {
    inner: openai_chat::ChatTranslator,
    /// Reused output buffer: one copy into the returned `bytes`, no other allocation.
    buf: Vec<u8>,
}

#[pymethods]
impl ChatTranslator {
    #[new]
    #[pyo3(signature = (model, completion_id, created, include_usage, *, json_tool=None, legacy_functions=false))]
    fn new(
        model: String,
        completion_id: String,
        created: i64,
        include_usage: bool,
        json_tool: Option<String>,
        legacy_functions: bool,
    ) -> Self {
        let opts = ChatOptions {
            model,
            completion_id,
            created,
            include_usage,
            json_tool,
            legacy_functions,
        };
        Self {
            inner: openai_chat::ChatTranslator::new(&opts),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Translate one chunk; returns the `OpenAI` SSE bytes it completed (maybe empty).
    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> Bound<'py, PyBytes> {
        self.buf.clear();
        if chunk.len() >= DETACH_BYTES {
            let (inner, buf) = (&mut self.inner, &mut self.buf);
            py.detach(|| inner.feed(chunk, buf));
        } else {
            self.inner.feed(chunk, &mut self.buf);
        }
        PyBytes::new(py, &self.buf)
    }

    /// Upstream EOF: returns an error frame if the stream had not ended
    /// (neither `[DONE]` nor an error was sent), else nothing. Idempotent.
    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.buf.clear();
        self.inner.finish(&mut self.buf);
        PyBytes::new(py, &self.buf)
    }

    /// `[DONE]` or an error frame was emitted.
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    /// Client tool calls emitted so far.
    #[getter]
    fn tool_calls(&self) -> u32 {
        self.inner.tool_calls()
    }

    /// What to bill, as `ethereal.usage.Usage`.
    fn usage(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let tracker = self.inner.tracker();
        crate::usage::to_python(py, &tracker.usage(), tracker.model.as_deref())
    }

    fn state(&self) -> crate::usage::StreamState {
        crate::usage::StreamState::of(self.inner.tracker(), self.inner.leftover())
    }

    fn __repr__(&self) -> String {
        let u = self.inner.usage();
        format!(
            "ChatTranslator(events={}, tool_calls={}, input={}, output={}, exact={}, done={})",
            self.inner.tracker().events,
            self.inner.tool_calls(),
            u.input_tokens,
            u.output_tokens,
            if u.exact { "True" } else { "False" },
            if self.inner.is_done() {
                "True"
            } else {
                "False"
            },
        )
    }
}
