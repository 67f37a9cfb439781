//! Usage accessors shared by `StreamTap` and `ChatTranslator`.
//!
//! pyo3 allows one `#[pymethods]` block per class (without the
//! `multiple-pymethods` feature) and rejects macro invocations inside it, so
//! the macro wraps the whole block: it emits `#[pymethods] impl $ty { ... }`
//! with the class's own methods first, then the shared getters, then any
//! trailing methods.
//!
//! `$inner` names the field holding the core type; it must provide
//! `usage() -> FinalUsage`, `tracker() -> &UsageTracker` and
//! `leftover() -> Option<Leftover>` (both `tap::StreamTap` and
//! `openai_chat::ChatTranslator` do).

macro_rules! usage_pymethods {
    (
        impl $ty:ident via $inner:ident {
            $($own:tt)*
        }
        then {
            $($tail:tt)*
        }
    ) => {
        #[pymethods]
        impl $ty {
            $($own)*

            /// `(input, output, cache_creation_5m, cache_creation_1h, cache_read, exact)`.
            fn usage(&self) -> (u64, u64, u64, u64, u64, bool) {
                let u = self.$inner.usage();
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
                self.$inner.usage().input_tokens
            }

            /// Billed output: `message_delta`'s count, or the estimate if it never came.
            #[getter]
            fn output_tokens(&self) -> u64 {
                self.$inner.usage().output_tokens
            }

            /// Output estimated from the streamed content alone.
            #[getter]
            fn estimated_output_tokens(&self) -> u64 {
                self.$inner.tracker().estimated_output_tokens()
            }

            /// All cache writes (5m + 1h).
            #[getter]
            fn cache_creation_input_tokens(&self) -> u64 {
                self.$inner.tracker().cache_creation_total()
            }

            /// 5-minute cache writes; all writes when the split was not reported.
            #[getter]
            fn cache_creation_5m(&self) -> u64 {
                self.$inner.usage().cache_creation_5m
            }

            #[getter]
            fn cache_creation_1h(&self) -> u64 {
                self.$inner.usage().cache_creation_1h
            }

            #[getter]
            fn cache_read_input_tokens(&self) -> u64 {
                self.$inner.usage().cache_read_input_tokens
            }

            /// The upstream sent the `cache_creation {5m, 1h}` object.
            #[getter]
            fn cache_split_reported(&self) -> bool {
                self.$inner.tracker().cache_split_reported()
            }

            #[getter]
            fn stop_reason(&self) -> Option<&str> {
                self.$inner.tracker().stop_reason.as_deref()
            }

            #[getter]
            fn message_id(&self) -> Option<&str> {
                self.$inner.tracker().message_id.as_deref()
            }

            #[getter]
            fn model(&self) -> Option<&str> {
                self.$inner.tracker().model.as_deref()
            }

            #[getter]
            fn error_type(&self) -> Option<&str> {
                self.$inner.tracker().error_type.as_deref()
            }

            #[getter]
            fn error_message(&self) -> Option<&str> {
                self.$inner.tracker().error_message.as_deref()
            }

            #[getter]
            fn saw_message_start(&self) -> bool {
                self.$inner.tracker().saw_message_start
            }

            #[getter]
            fn saw_message_delta(&self) -> bool {
                self.$inner.tracker().saw_message_delta
            }

            #[getter]
            fn saw_message_stop(&self) -> bool {
                self.$inner.tracker().saw_message_stop
            }

            /// Events parsed so far, pings and unknown kinds included.
            #[getter]
            fn events(&self) -> u64 {
                self.$inner.tracker().events
            }

            /// Events whose data was not JSON of the expected shape.
            #[getter]
            fn malformed_events(&self) -> u64 {
                self.$inner.tracker().malformed_events
            }

            /// `finish()` found an unterminated line or event (the stream was cut).
            #[getter]
            fn truncated(&self) -> bool {
                self.$inner.leftover().is_some_and(::ethereal_core::sse::Leftover::any)
            }

            $($tail)*
        }
    };
}
