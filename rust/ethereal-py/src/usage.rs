//! What every native stream object reports, as Python values: the billed
//! usage as `ethereal.usage.Usage` (the one usage type from the tap to the
//! database) and the stream's state as a `StreamState`.

use ethereal_core::sse::Leftover;
use ethereal_core::{FinalUsage, UsageTracker};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

static USAGE_TYPES: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// Sets the token counts `Usage` and `Iteration` both take, from a `FinalUsage` or an
/// `IterationUsage` (the same field names), as keyword arguments.
macro_rules! set_token_counts {
    ($kw:ident, $u:ident) => {
        $kw.set_item("input_tokens", $u.input_tokens)?;
        $kw.set_item("output_tokens", $u.output_tokens)?;
        $kw.set_item("cache_5m", $u.cache_creation_5m)?;
        $kw.set_item("cache_1h", $u.cache_creation_1h)?;
        $kw.set_item("cache_read", $u.cache_read_input_tokens)?;
    };
}

/// `ethereal.usage.Usage` for a stream's final usage (called once per stream).
pub fn to_python(
    py: Python<'_>,
    u: &FinalUsage,
    served_model: Option<&str>,
) -> PyResult<Py<PyAny>> {
    let (usage_type, iteration_type) = USAGE_TYPES.get_or_try_init(py, || -> PyResult<_> {
        let module = py.import("ethereal.usage")?;
        Ok((
            module.getattr("Usage")?.unbind(),
            module.getattr("Iteration")?.unbind(),
        ))
    })?;
    let iterations = u
        .iterations
        .iter()
        .map(|it| {
            let kw = PyDict::new(py);
            kw.set_item("type", &it.kind)?;
            kw.set_item("model", it.model.as_deref())?;
            set_token_counts!(kw, it);
            kw.set_item("ttl_assumed", it.ttl_assumed)?;
            iteration_type.bind(py).call((), Some(&kw))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let kw = PyDict::new(py);
    set_token_counts!(kw, u);
    kw.set_item("web_searches", u.web_search_requests)?;
    kw.set_item("iterations", PyTuple::new(py, iterations)?)?;
    kw.set_item("exact", u.exact)?;
    kw.set_item("ttl_assumed", u.ttl_assumed())?;
    kw.set_item("served_model", served_model)?;
    kw.set_item("speed", u.speed.as_deref())?;
    kw.set_item("inference_geo", u.inference_geo.as_deref())?;
    kw.set_item("service_tier", u.service_tier.as_deref())?;
    Ok(usage_type.bind(py).call((), Some(&kw))?.unbind())
}

/// What a stream showed besides its usage: how it ended, and how it was read.
#[pyclass(frozen, get_all, module = "ethereal._native")]
// The flags mirror the stream's milestones one to one.
#[allow(clippy::struct_excessive_bools)]
pub struct StreamState {
    /// `message_start`'s id and model.
    message_id: Option<String>,
    model: Option<String>,
    stop_reason: Option<String>,
    /// An upstream `error` event's type and message.
    error_type: Option<String>,
    error_message: Option<String>,
    saw_message_start: bool,
    saw_message_delta: bool,
    saw_message_stop: bool,
    /// Events parsed so far, pings and unknown kinds included.
    events: u64,
    /// Events whose data was not JSON of the expected shape.
    malformed_events: u64,
    /// Output estimated from the streamed content alone.
    estimated_output_tokens: u64,
    /// The upstream sent the `cache_creation {5m, 1h}` object.
    cache_split_reported: bool,
    /// `finish()` found an unterminated line or event (the stream was cut).
    truncated: bool,
}

impl StreamState {
    pub fn of(tracker: &UsageTracker, leftover: Option<Leftover>) -> Self {
        Self {
            message_id: tracker.message_id.clone(),
            model: tracker.model.clone(),
            stop_reason: tracker.stop_reason.clone(),
            error_type: tracker.error_type.clone(),
            error_message: tracker.error_message.clone(),
            saw_message_start: tracker.saw_message_start,
            saw_message_delta: tracker.saw_message_delta,
            saw_message_stop: tracker.saw_message_stop,
            events: tracker.events,
            malformed_events: tracker.malformed_events,
            estimated_output_tokens: tracker.estimated_output_tokens(),
            cache_split_reported: tracker.cache_split_reported(),
            truncated: leftover.is_some_and(Leftover::any),
        }
    }
}

#[pymethods]
impl StreamState {
    fn __repr__(&self) -> String {
        format!(
            "StreamState(events={}, stop_reason={:?}, error_type={:?}, saw_message_stop={}, truncated={})",
            self.events, self.stop_reason, self.error_type, self.saw_message_stop, self.truncated
        )
    }
}
