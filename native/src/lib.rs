//! `iir._native`: the request hot path in Rust (scrubbing, token counting, rate limiting).
//!
//! Every entry point returns a Python exception on bad input; no panic crosses the boundary
//! (pyo3 turns a panic into `PanicException`, and the code below avoids panicking paths).
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

pub mod cues;
pub mod http;
mod py_http;
pub mod ratelimit;
pub mod rules;
pub mod scrub;
pub mod tokens;

/// Texts at least this long are processed without holding the GIL.
const DETACH_BYTES: usize = 8 * 1024;

/// Deepest nesting of lists and dicts that `Scrubber.scrub` walks.
const MAX_DEPTH: usize = 256;

// ---------------------------------------------------------------------------------------------
// Scrubbing

#[pyclass(module = "iir._native", name = "Scrubber", frozen)]
struct PyScrubber {
    inner: Arc<scrub::Scrubber>,
    key_regex: regex_automata::meta::Regex,
    pool: Arc<ScratchPool>,
}

/// Scratch spaces for reuse: the scrubbing calls and the streams share them.
#[derive(Default)]
struct ScratchPool(Mutex<Vec<scrub::Scratch>>);

impl ScratchPool {
    fn take(&self, scrubber: &scrub::Scrubber) -> scrub::Scratch {
        let popped = self.0.lock().ok().and_then(|mut p| p.pop());
        popped.unwrap_or_else(|| scrubber.scratch())
    }

    fn give(&self, s: scrub::Scratch) {
        if let Ok(mut p) = self.0.lock() {
            if p.len() < 64 {
                p.push(s);
            }
        }
    }
}

/// Counts by rule index, turned into `{rule_name: count}` for the non-zero ones.
fn counts_dict<'py>(
    py: Python<'py>,
    names: &[&'static str],
    counts: &[u64],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, &n) in names.iter().zip(counts) {
        if n > 0 {
            d.set_item(*name, n)?;
        }
    }
    Ok(d)
}

impl PyScrubber {
    fn take_scratch(&self) -> scrub::Scratch {
        self.pool.take(&self.inner)
    }

    fn give_scratch(&self, s: scrub::Scratch) {
        self.pool.give(s)
    }

    /// Scrub one Python string; `None` when nothing matched.
    fn scrub_str<'py>(
        &self,
        s: &Bound<'py, PyString>,
        scratch: &mut scrub::Scratch,
        counts: &mut [u64],
    ) -> PyResult<Option<Bound<'py, PyString>>> {
        let py = s.py();
        let owned;
        let text: &str = match s.to_str() {
            Ok(t) => t,
            Err(_) => {
                // Lone surrogates: scan the lossy form, keep the original if nothing matched.
                owned = s.to_string_lossy().into_owned();
                &owned
            }
        };
        let inner = &self.inner;
        let result = if text.len() >= DETACH_BYTES {
            py.detach(|| inner.scrub(scratch, text, counts).map_or_owned())
        } else {
            inner.scrub(scratch, text, counts).map_or_owned()
        };
        Ok(result.map(|t| PyString::new(py, &t)))
    }

    fn walk<'py>(
        &self,
        obj: &Bound<'py, PyAny>,
        scratch: &mut scrub::Scratch,
        counts: &mut [u64],
        depth: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = obj.py();
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(self.scrub_str(s, scratch, counts)?.map(|s| s.into_any()));
        }
        if depth >= MAX_DEPTH {
            if obj.is_instance_of::<PyDict>() || obj.is_instance_of::<PyList>() {
                return Err(PyValueError::new_err(format!(
                    "payload nested deeper than {MAX_DEPTH} levels"
                )));
            }
            return Ok(None);
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            let mut changed: Vec<Replacement<'py>> = Vec::new();
            for (i, (k, v)) in d.iter().enumerate() {
                let new_k = self.walk(&k, scratch, counts, depth + 1)?;
                let mut new_v = None;
                if let (Ok(ks), Ok(vs)) = (k.cast::<PyString>(), v.cast::<PyString>()) {
                    if let (Ok(kt), Ok(vt)) = (ks.to_str(), vs.to_str()) {
                        if self.is_secret_key(kt) && scrub::accept_value("assignment", vt) {
                            counts[self.rule_index("assignment")] += 1;
                            new_v = Some(PyString::new(py, scrub::REDACTED).into_any());
                        }
                    }
                }
                if new_v.is_none() {
                    new_v = self.walk(&v, scratch, counts, depth + 1)?;
                }
                if new_k.is_some() || new_v.is_some() {
                    changed.push((i, new_k, new_v));
                }
            }
            if changed.is_empty() {
                return Ok(None);
            }
            let out = PyDict::new(py);
            let mut next = changed.into_iter().peekable();
            for (i, (k, v)) in d.iter().enumerate() {
                match next.peek() {
                    Some((j, _, _)) if *j == i => {
                        let (_, nk, nv) = next.next().unwrap_or((i, None, None));
                        out.set_item(nk.unwrap_or(k), nv.unwrap_or(v))?;
                    }
                    _ => out.set_item(k, v)?,
                }
            }
            return Ok(Some(out.into_any()));
        }
        if let Ok(l) = obj.cast::<PyList>() {
            return match self.walk_items(l.iter(), scratch, counts, depth)? {
                None => Ok(None),
                Some(it) => Ok(Some(PyList::new(py, it)?.into_any())),
            };
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            return match self.walk_items(t.iter(), scratch, counts, depth)? {
                None => Ok(None),
                Some(it) => Ok(Some(PyTuple::new(py, it)?.into_any())),
            };
        }
        Ok(None)
    }

    /// Scrubs the items of a sequence; `None` when none changed (the caller keeps the original).
    fn walk_items<'py>(
        &self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        scratch: &mut scrub::Scratch,
        counts: &mut [u64],
        depth: usize,
    ) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
        let mut seen: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut changed = false;
        for v in items {
            match self.walk(&v, scratch, counts, depth + 1)? {
                Some(nv) => {
                    changed = true;
                    seen.push(nv);
                }
                None => seen.push(v),
            }
        }
        Ok(changed.then_some(seen))
    }

    fn is_secret_key(&self, key: &str) -> bool {
        key.len() <= 64 && rules::may_be_secret_key(key) && self.key_regex.is_match(key)
    }

    fn rule_index(&self, name: &str) -> usize {
        self.inner
            .rule_names()
            .iter()
            .position(|n| *n == name)
            .unwrap_or(0)
    }
}

/// A dict item to rebuild: its index, new key (if changed), new value (if changed).
type Replacement<'py> = (usize, Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>);

trait MapOrOwned {
    fn map_or_owned(self) -> Option<String>;
}

impl MapOrOwned for std::borrow::Cow<'_, str> {
    fn map_or_owned(self) -> Option<String> {
        match self {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(s) => Some(s),
        }
    }
}

#[pymethods]
impl PyScrubber {
    /// Build from literal secrets (the caller picks them); the built-in rules are always on.
    #[new]
    #[pyo3(signature = (secrets = Vec::new()))]
    fn new(secrets: Vec<String>) -> PyResult<Self> {
        let inner = scrub::Scrubber::new(&secrets).map_err(|e| PyValueError::new_err(e.0))?;
        let key_regex = regex_automata::meta::Regex::new(&rules::secret_key_pattern())
            .map_err(|e| PyRuntimeError::new_err(format!("invalid key pattern: {e}")))?;
        Ok(Self {
            inner: Arc::new(inner),
            key_regex,
            pool: Arc::default(),
        })
    }

    /// Rule names, as used in the counts.
    #[getter]
    fn rule_names(&self) -> Vec<&'static str> {
        self.inner.rule_names().to_vec()
    }

    /// Scrub one text: `(clean text, {rule: count})`; the same object when nothing matched.
    fn scrub_text<'py>(
        &self,
        text: &Bound<'py, PyString>,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>)> {
        let py = text.py();
        let mut counts = vec![0u64; self.inner.rule_names().len()];
        let mut scratch = self.take_scratch();
        let out = self.scrub_str(text, &mut scratch, &mut counts);
        self.give_scratch(scratch);
        let out = out?.unwrap_or_else(|| text.clone());
        Ok((out, counts_dict(py, self.inner.rule_names(), &counts)?))
    }

    /// Scrub a JSON-like object (dict / list / str, nested) in one call; never mutates it, and
    /// returns the same object when nothing matched.
    fn scrub<'py>(
        &self,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let py = obj.py();
        let mut counts = vec![0u64; self.inner.rule_names().len()];
        let mut scratch = self.take_scratch();
        let out = self.walk(obj, &mut scratch, &mut counts, 0);
        self.give_scratch(scratch);
        let out = out?.unwrap_or_else(|| obj.clone());
        Ok((out, counts_dict(py, self.inner.rule_names(), &counts)?))
    }

    /// A scrubber for one stream of chunks.
    fn stream(&self) -> PyStreamScrubber {
        PyStreamScrubber {
            state: Some(scrub::Stream::with_scratch(
                &self.inner,
                self.take_scratch(),
            )),
            scrubber: self.inner.clone(),
            pool: self.pool.clone(),
        }
    }
}

#[pyclass(module = "iir._native", name = "StreamScrubber")]
struct PyStreamScrubber {
    scrubber: Arc<scrub::Scrubber>,
    /// Always present; an `Option` only so that `Drop` can hand its scratch back to the pool.
    state: Option<scrub::Stream>,
    pool: Arc<ScratchPool>,
}

impl PyStreamScrubber {
    /// The stream state and its scrubber, borrowed together.
    fn parts(&mut self) -> (&mut scrub::Stream, &scrub::Scrubber) {
        let scrubber = &self.scrubber;
        let state = self
            .state
            .get_or_insert_with(|| scrub::Stream::new(scrubber));
        (state, scrubber)
    }
}

impl Drop for PyStreamScrubber {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            self.pool.give(state.into_scratch());
        }
    }
}

#[pymethods]
impl PyStreamScrubber {
    /// Add a chunk; returns the text that is safe to emit now.
    fn push(&mut self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<String> {
        let owned;
        let t: &str = match text.to_str() {
            Ok(t) => t,
            Err(_) => {
                owned = text.to_string_lossy().into_owned();
                &owned
            }
        };
        let _ = py;
        let (state, scrubber) = self.parts();
        Ok(state.push(scrubber, t))
    }

    /// Flush what was held back (the end of the stream).
    fn finish(&mut self) -> String {
        let (state, scrubber) = self.parts();
        state.finish(scrubber)
    }

    /// Redactions so far, by rule.
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.state.as_ref().map_or(&[][..], |s| &s.counts[..]);
        counts_dict(py, self.scrubber.rule_names(), counts)
    }
}

/// The built-in rules as `(name, pattern)` (regex crate syntax), for documentation and for
/// baselines that reimplement them.
#[pyfunction]
fn rule_patterns() -> Vec<(&'static str, String)> {
    rules::builtin()
        .into_iter()
        .map(|r| (r.name, r.pattern))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn token_err(e: tokens::TokenError) -> PyErr {
    match e {
        tokens::TokenError::UnknownEncoding(_) => PyValueError::new_err(e.to_string()),
        tokens::TokenError::Integrity(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Number of tokens in `text` (as tiktoken's `encode_ordinary`).
#[pyfunction]
#[pyo3(signature = (text, encoding = "o200k_base"))]
fn count_text(py: Python<'_>, text: &str, encoding: &str) -> PyResult<usize> {
    let tok = tokens::tokenizer(encoding).map_err(token_err)?;
    if text.len() >= DETACH_BYTES {
        Ok(py.detach(|| tok.count(text)))
    } else {
        Ok(tok.count(text))
    }
}

/// Total number of tokens over several texts.
#[pyfunction]
#[pyo3(signature = (texts, encoding = "o200k_base"))]
fn count_texts(py: Python<'_>, texts: Vec<String>, encoding: &str) -> PyResult<usize> {
    let tok = tokens::tokenizer(encoding).map_err(token_err)?;
    let total: usize = texts.iter().map(String::len).sum();
    let run = || texts.iter().map(|t| tok.count(t.as_str())).sum();
    if total >= DETACH_BYTES {
        Ok(py.detach(run))
    } else {
        Ok(run())
    }
}

/// Token ids of `text` (as tiktoken's `encode_ordinary`).
#[pyfunction]
#[pyo3(signature = (text, encoding = "o200k_base"))]
fn encode(py: Python<'_>, text: &str, encoding: &str) -> PyResult<Vec<u32>> {
    let tok = tokens::tokenizer(encoding).map_err(token_err)?;
    if text.len() >= DETACH_BYTES {
        Ok(py.detach(|| tok.encode(text)))
    } else {
        Ok(tok.encode(text))
    }
}

/// The rank table of an encoding (token bytes, index = rank): for reference encoders in tests.
#[pyfunction]
fn encoding_ranks(py: Python<'_>, encoding: &str) -> PyResult<Vec<Py<pyo3::types::PyBytes>>> {
    let ranks = tokens::ranks(encoding).map_err(token_err)?;
    Ok(ranks
        .iter()
        .map(|r| pyo3::types::PyBytes::new(py, r).unbind())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

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

// ---------------------------------------------------------------------------------------------
// Routing cues

/// A cue: its key and its points as (category index, weight).
type CueEntries = Vec<(String, Vec<(usize, f64)>)>;
/// Literal markers: (text, category index, weight, label).
type CueMarkers = Vec<(String, usize, f64, String)>;
/// Patterns: (Rust pattern, gates, category index, weight, label).
type CuePatterns = Vec<(String, Vec<cues::Gate>, usize, f64, String)>;

/// Character classes as code-point ranges (word, wide, space) and the clause-ending characters.
type CueChars = (Vec<(u32, u32)>, Vec<(u32, u32)>, Vec<(u32, u32)>, String);

/// The routing classifier's cue tables, compiled once; `scan_prompt` scores one prompt.
#[pyclass(module = "iir._native", name = "CueScanner", frozen)]
struct PyCueScanner {
    inner: cues::Scanner,
}

#[pymethods]
impl PyCueScanner {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (categories, words, stems, cjk, markers, patterns, chars, weights))]
    fn new(
        categories: usize,
        words: CueEntries,
        stems: CueEntries,
        cjk: CueEntries,
        markers: CueMarkers,
        patterns: CuePatterns,
        chars: CueChars,
        weights: (f64, f64, f64, f64, f64),
    ) -> PyResult<Self> {
        let (word_chars, wide_chars, space_chars, clause_ends) = chars;
        let (text_weight, system_weight, section_cap, lead_bonus, end_bonus) = weights;
        let tables = cues::Tables {
            words,
            stems,
            cjk,
            markers,
            patterns,
            word_chars,
            wide_chars,
            space_chars,
            clause_ends,
            categories,
            text_weight,
            system_weight,
            section_cap,
            lead_bonus,
            end_bonus,
        };
        let inner = cues::Scanner::new(tables).map_err(PyValueError::new_err)?;
        Ok(PyCueScanner { inner })
    }

    #[pyo3(signature = (head, tail, system, top = 3))]
    fn scan_prompt(
        &self,
        head: &str,
        tail: &str,
        system: &str,
        top: usize,
    ) -> (Vec<f64>, Vec<Vec<(f64, String)>>) {
        let s = self.inner.scan_prompt(head, tail, system, top);
        (s.total, s.cues)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("REDACTED", scrub::REDACTED)?;
    m.add("ENCODINGS", tokens::ENCODINGS.to_vec())?;
    m.add_class::<PyScrubber>()?;
    m.add_class::<PyStreamScrubber>()?;
    m.add_class::<PyRateLimiter>()?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyCueScanner>()?;
    py_http::register(m)?;
    m.add_function(wrap_pyfunction!(rule_patterns, m)?)?;
    m.add_function(wrap_pyfunction!(count_text, m)?)?;
    m.add_function(wrap_pyfunction!(count_texts, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(encoding_ranks, m)?)?;
    Ok(())
}
