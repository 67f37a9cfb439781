//! `ChatTranslator` (Anthropic SSE → `OpenAI` `chat.completion.chunk` SSE) and
//! `ResponsesTranslator` (→ Responses API stream events): the core's one
//! translation engine with each wire format, with the same `usage()` and
//! `state()` as `StreamTap` so metering works identically.
//!
//! One macro writes both classes; each gives only its constructor and the
//! count it reports (tool calls, output items).

use ethereal_core::openai_chat::{ChatEmitter, ChatOptions};
use ethereal_core::responses::{ResponsesEmitter, ResponsesOptions};
use ethereal_core::translate::{Emitter, Translator};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ChatTranslator>()?;
    m.add_class::<ResponsesTranslator>()
}

/// A translator class over `Translator<$emitter>`: `$ctor` is its `#[new]`
/// (building the options and calling `Self::wrap`), `$count` the getter of what
/// it reports besides `done` (also shown by `repr()`).
macro_rules! translator_class {
    (
        $(#[$doc:meta])*
        $name:ident($emitter:ty) {
            $($ctor:tt)*
        }
        $(#[$count_doc:meta])*
        $count:ident -> $count_ty:ty
    ) => {
        $(#[$doc])*
        #[pyclass(module = "ethereal._native")]
        pub struct $name {
            inner: Translator<$emitter>,
            /// Reused output buffer: one copy into the returned `bytes`, no other allocation.
            buf: Vec<u8>,
        }

        impl $name {
            fn wrap(opts: &<$emitter as Emitter>::Options) -> Self {
                Self {
                    inner: Translator::new(opts),
                    buf: Vec::with_capacity(4096),
                }
            }
        }

        #[pymethods]
        impl $name {
            $($ctor)*

            /// Translate one chunk; returns the output bytes it completed (maybe empty).
            fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> Bound<'py, PyBytes> {
                self.buf.clear();
                let (inner, buf) = (&mut self.inner, &mut self.buf);
                crate::maybe_detached(py, chunk.len(), || inner.feed(chunk, buf));
                PyBytes::new(py, &self.buf)
            }

            /// Upstream EOF: the failure frame if the stream had not ended, else
            /// nothing. Idempotent.
            fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
                self.buf.clear();
                self.inner.finish(&mut self.buf);
                PyBytes::new(py, &self.buf)
            }

            /// The stream's last frame (its end or a failure) was emitted.
            #[getter]
            fn done(&self) -> bool {
                self.inner.is_done()
            }

            $(#[$count_doc])*
            #[getter]
            fn $count(&self) -> $count_ty {
                self.inner.$count()
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
                    "{}(events={}, {}={}, input={}, output={}, exact={}, done={})",
                    stringify!($name),
                    self.inner.tracker().events,
                    stringify!($count),
                    self.inner.$count(),
                    u.input_tokens,
                    u.output_tokens,
                    crate::py_bool(u.exact),
                    crate::py_bool(self.inner.is_done()),
                )
            }
        }
    };
}

translator_class! {
    /// Translates one upstream stream into `chat.completion.chunk` SSE. `feed()`
    /// every network chunk and send what it returns; `finish()` at upstream EOF
    /// (or when the upstream connection failed) and send that too.
    ChatTranslator(ChatEmitter) {
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
            Self::wrap(&ChatOptions {
                model,
                completion_id,
                created,
                include_usage,
                json_tool,
                legacy_functions,
            })
        }
    }
    /// Client tool calls emitted so far.
    tool_calls -> u32
}

translator_class! {
    /// Translates one upstream stream into Responses API stream events. `feed()`
    /// every network chunk and send what it returns; `finish()` at upstream EOF
    /// (or when the upstream connection failed) and send that too.
    ResponsesTranslator(ResponsesEmitter) {
        #[new]
        #[pyo3(signature = (response_id, head, *, custom_tools=Vec::new(), namespaced=Vec::new(), json_tool=None))]
        fn new(
            response_id: String,
            head: String,
            custom_tools: Vec<String>,
            namespaced: Vec<(String, String, String)>,
            json_tool: Option<String>,
        ) -> Self {
            Self::wrap(&ResponsesOptions {
                response_id,
                head,
                custom_tools,
                namespaced,
                json_tool,
            })
        }
    }
    /// Output items emitted so far.
    items -> usize
}
