//! Request bodies: the estimator and the shape scan must not panic or overflow the
//! stack on any input, and must agree on what is too deep.
#![no_main]

use ethereal_core::shape::{scan_locate, MAX_DEPTH};
use ethereal_core::{estimate_tokens, EstimateError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shape = scan_locate(data, Some("model"));
    let estimate = estimate_tokens(data);
    if let Ok(s) = &shape {
        if s.max_depth > MAX_DEPTH {
            assert!(matches!(estimate, Err(EstimateError::TooDeep(_))));
        }
        if let Some((a, b)) = s.located {
            assert!(a <= b && b <= data.len());
        }
    }
});
