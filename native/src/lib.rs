//! `iir._native`: the request hot path in Rust (scrubbing, token counting, rate limiting, the
//! routing classifier's cue scan).
//!
//! Each engine sits beside its Python bindings (`scrub` and `py_scrub`, ...). Every entry point
//! returns a Python exception on bad input; no panic crosses the boundary (and none is written:
//! `unwrap`, `expect` and `panic!` are refused outside tests).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
use pyo3::prelude::*;

pub mod cues;
pub mod http;
mod py_http;
pub mod ratelimit;
pub mod rules;
pub mod scrub;
pub mod tokens;

mod py_cues;
mod py_ratelimit;
mod py_scrub;
mod py_tokens;

/// Texts at least this long are processed without holding the GIL.
pub(crate) const DETACH_BYTES: usize = 8 * 1024;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py_scrub::register(m)?;
    py_tokens::register(m)?;
    py_ratelimit::register(m)?;
    py_cues::register(m)?;
    py_http::register(m)?;
    Ok(())
}
