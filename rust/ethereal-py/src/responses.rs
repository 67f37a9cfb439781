//! `ResponsesTranslator`: Anthropic SSE → `OpenAI` Responses API stream events,
//! with the same `usage()` and `state()` as `StreamTap` so metering works identically.

use ethereal_core::responses::{self, ResponsesOptions};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Inputs at least this large are translated with the GIL released.
const DETACH_BYTES: usize = 64 * 1024;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ResponsesTranslator>()
}

/// Translates one upstream stream. `feed()` every network chunk and send
/// what it returns; `finish()` at upstream EOF (or when the upstream
/// connection failed) and send that too.
#[pyclass(module = "ethereal._native")]
struct ResponsesTranslator {
    inner: responses::ResponsesTranslator,
    /// Reused output buffer: one copy into the returned `bytes`, no other allocation.
    buf: Vec<u8>,
}

#[pymethods]
impl ResponsesTranslator {
    #[new]
    #[pyo3(signature = (response_id, head, *, custom_tools=Vec::new(), namespaced=Vec::new(), json_tool=None))]
    fn new(
        response_id: String,
        head: String,
        custom_tools: Vec<String>,
        namespaced: Vec<(String, String, String)>,
        json_tool: Option<String>,
    ) -> Self {
        let opts = ResponsesOptions {
            response_id,
            head,
            custom_tools,
            namespaced,
            json_tool,
        };
        Self {
            inner: responses::ResponsesTranslator::new(&opts),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Translate one chunk; returns the Responses SSE bytes it completed (maybe empty).
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

    /// Upstream EOF: `response.failed` if the stream had not ended, else nothing. Idempotent.
    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.buf.clear();
        self.inner.finish(&mut self.buf);
        PyBytes::new(py, &self.buf)
    }

    /// The final event (`completed`, `incomplete` or `failed`) was emitted.
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    /// Output items emitted so far.
    #[getter]
    fn items(&self) -> usize {
        self.inner.items()
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
            "ResponsesTranslator(events={}, items={}, input={}, output={}, exact={}, done={})",
            self.inner.tracker().events,
            self.inner.items(),
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
