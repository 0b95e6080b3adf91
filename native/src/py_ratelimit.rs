//! Python bindings of the rate limiter.

use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::ratelimit;

/// The outcome of a rate-limit check (immutable; compares by value).
#[pyclass(module = "iir._native", name = "Decision", frozen, eq, get_all)]
#[derive(PartialEq)]
struct PyDecision {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_seconds: f64,
    retry_after_seconds: f64,
}

#[pymethods]
impl PyDecision {
    #[new]
    #[pyo3(signature = (allowed, limit, remaining, reset_seconds, retry_after_seconds))]
    fn new(
        allowed: bool,
        limit: u64,
        remaining: u64,
        reset_seconds: f64,
        retry_after_seconds: f64,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            reset_seconds,
            retry_after_seconds,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, limit={}, remaining={}, reset_seconds={:?}, retry_after_seconds={:?})",
            if self.allowed { "True" } else { "False" },
            self.limit,
            self.remaining,
            self.reset_seconds,
            self.retry_after_seconds
        )
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.allowed,
            self.limit,
            self.remaining,
            self.reset_seconds.to_bits(),
            self.retry_after_seconds.to_bits(),
        )
            .hash(&mut h);
        h.finish()
    }
}

impl From<ratelimit::Decision> for PyDecision {
    fn from(d: ratelimit::Decision) -> Self {
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_seconds: d.reset_seconds,
            retry_after_seconds: d.retry_after_seconds,
        }
    }
}

#[pyclass(module = "iir._native", name = "RateLimiter", frozen)]
struct PyRateLimiter {
    inner: ratelimit::Limiter,
    epoch: Instant,
}

#[pymethods]
impl PyRateLimiter {
    #[new]
    #[pyo3(signature = (per_minute, burst = None, max_keys = 100_000))]
    fn new(per_minute: i64, burst: Option<i64>, max_keys: i64) -> PyResult<Self> {
        if per_minute < 0 {
            return Err(PyValueError::new_err(format!(
                "per_minute must be >= 0, got {per_minute}"
            )));
        }
        if let Some(b) = burst {
            if b < 1 {
                return Err(PyValueError::new_err(format!(
                    "burst must be >= 1, got {b}"
                )));
            }
        }
        if max_keys < 1 {
            return Err(PyValueError::new_err(format!(
                "max_keys must be >= 1, got {max_keys}"
            )));
        }
        let inner = ratelimit::Limiter::new(
            per_minute as u64,
            burst.map(|b| b as u64),
            max_keys as usize,
        )
        .map_err(|e| PyValueError::new_err(e.0))?;
        Ok(Self {
            inner,
            epoch: Instant::now(),
        })
    }

    /// Admit `cost` units for `key` at `now` (seconds; default: an internal monotonic clock).
    #[pyo3(signature = (key, cost = 1, now = None))]
    fn check(&self, key: &str, cost: i64, now: Option<f64>) -> PyResult<PyDecision> {
        if cost < 0 {
            return Err(PyValueError::new_err(format!(
                "cost must be >= 0, got {cost}"
            )));
        }
        let now = self.now(now)?;
        Ok(self.inner.check(key, cost as u64, now).into())
    }

    /// Charge (positive) or refund (negative) units for `key`.
    #[pyo3(signature = (key, delta, now = None))]
    fn adjust(&self, key: &str, delta: i64, now: Option<f64>) -> PyResult<()> {
        let now = self.now(now)?;
        self.inner.adjust(key, delta, now);
        Ok(())
    }

    /// Drop idle keys now (they are also dropped whenever room is needed).
    #[pyo3(signature = (now = None))]
    fn sweep(&self, now: Option<f64>) -> PyResult<()> {
        let now = self.now(now)?;
        self.inner.sweep(now);
        Ok(())
    }

    #[getter]
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    #[getter]
    fn per_minute(&self) -> u64 {
        self.inner.per_minute()
    }

    #[getter]
    fn burst(&self) -> u64 {
        self.inner.burst()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

impl PyRateLimiter {
    fn now(&self, now: Option<f64>) -> PyResult<f64> {
        match now {
            None => Ok(self.epoch.elapsed().as_secs_f64()),
            Some(t) if t.is_finite() => Ok(t),
            Some(t) => Err(PyValueError::new_err(format!(
                "clock returned a non-finite time: {t}"
            ))),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRateLimiter>()?;
    m.add_class::<PyDecision>()?;
    Ok(())
}
