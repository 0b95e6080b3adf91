//! Python bindings of the scrubber: `Scrubber`, `StreamScrubber` and the rule table.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::{rules, scrub, DETACH_BYTES};

/// Deepest nesting of lists and dicts that `Scrubber.scrub` walks.
const MAX_DEPTH: usize = 256;

pyo3::create_exception!(
    iir._native,
    ScrubError,
    PyValueError,
    "A payload the scrubber cannot walk (nested too deep); `path` names the field in OpenAI's \
     `param` style (`messages[0].content`, empty for the top level), `reason` says why."
);

/// A parsed set of rules: the package's table, or an operator's file in gitleaks' format.
#[pyclass(module = "iir._native", name = "RuleSet", frozen)]
struct PyRuleSet {
    rules: Vec<rules::Rule>,
    skipped: Vec<String>,
}

fn rules_error(e: rules::RulesError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

#[pymethods]
impl PyRuleSet {
    /// The rule table (TOML text in the table's own format).
    #[staticmethod]
    fn from_table(text: &str) -> PyResult<Self> {
        Ok(Self {
            rules: rules::parse_table(text).map_err(rules_error)?,
            skipped: Vec::new(),
        })
    }

    /// Rules in gitleaks' TOML format, translated and checked; `ValueError` names the rule and
    /// its line.
    #[staticmethod]
    fn from_gitleaks(text: &str) -> PyResult<Self> {
        let parsed = rules::parse_gitleaks(text).map_err(rules_error)?;
        Ok(Self {
            rules: parsed.rules,
            skipped: parsed.skipped.iter().map(ToString::to_string).collect(),
        })
    }

    /// The rules of a gitleaks file left out (their matches may start anywhere), each as a
    /// line naming the rule, its line and why.
    #[getter]
    fn skipped(&self) -> Vec<String> {
        self.skipped.clone()
    }

    /// Rule names, in priority order (a name may stand for several patterns).
    #[getter]
    fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rules {
            if !out.contains(&r.name) {
                out.push(r.name.clone());
            }
        }
        out
    }

    /// `(name, pattern, triggers)` per pattern, in priority order (regex crate syntax), for
    /// documentation and for baselines that reimplement them.
    fn patterns(&self) -> Vec<(String, String, Vec<String>)> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.pattern.clone(), r.triggers.clone()))
            .collect()
    }

    fn __len__(&self) -> usize {
        self.rules.len()
    }
}

#[pyclass(module = "iir._native", name = "Scrubber", frozen)]
struct PyScrubber {
    inner: Arc<scrub::Scrubber>,
    key_regex: regex_automata::meta::Regex,
    pool: Arc<ScratchPool>,
    /// Index of the `assignment` rule in the counts (values under secret-looking keys).
    assignment: Option<usize>,
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
    names: &[String],
    counts: &[u64],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, &n) in names.iter().zip(counts) {
        if n > 0 {
            d.set_item(name, n)?;
        }
    }
    Ok(d)
}

/// Why a walk stopped: a Python error, or a payload the scrubber refuses (with the path to it,
/// innermost segment first while unwinding).
enum WalkError {
    Py(PyErr),
    Refused { reason: String, path: Vec<Segment> },
}

impl From<PyErr> for WalkError {
    fn from(e: PyErr) -> Self {
        WalkError::Py(e)
    }
}

/// One step of a path into a payload: a dict key (already scrubbed) or a list index.
enum Segment {
    Key(String),
    Index(usize),
}

/// Longest dict key written into a path, in characters.
const PATH_KEY_CHARS: usize = 40;

/// Longest path written into an error, in characters (a path 256 levels deep is elided in the
/// middle).
const PATH_CHARS: usize = 200;

/// A path in OpenAI's `param` style: `messages[0].content`.
fn param_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let mut chars = k.chars();
                out.extend(chars.by_ref().take(PATH_KEY_CHARS));
                if chars.next().is_some() {
                    out.push('\u{2026}');
                }
            }
        }
    }
    let n = out.chars().count();
    if n > PATH_CHARS {
        let head: String = out.chars().take(PATH_CHARS / 2).collect();
        let tail: String = out.chars().skip(n - PATH_CHARS / 2).collect();
        out = format!("{head}\u{2026}{tail}");
    }
    out
}

impl WalkError {
    fn at(mut self, segment: impl FnOnce() -> Segment) -> Self {
        if let WalkError::Refused { path, .. } = &mut self {
            path.push(segment());
        }
        self
    }

    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            WalkError::Py(e) => e,
            WalkError::Refused { reason, mut path } => {
                path.reverse();
                let path = param_path(&path);
                let message = if path.is_empty() {
                    reason.clone()
                } else {
                    format!("{path}: {reason}")
                };
                let err = ScrubError::new_err(message);
                let value = err.value(py);
                if let Err(e) = value
                    .setattr("path", &path)
                    .and_then(|_| value.setattr("reason", &reason))
                {
                    return e;
                }
                err
            }
        }
    }
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
                // Lone surrogates (not UTF-8): scan the lossy form, keep the original if nothing
                // matched. Never an error: such text is scrubbed like any other.
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
    ) -> Result<Option<Bound<'py, PyAny>>, WalkError> {
        let py = obj.py();
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(self.scrub_str(s, scratch, counts)?.map(|s| s.into_any()));
        }
        let container = obj.is_instance_of::<PyDict>()
            || obj.is_instance_of::<PyList>()
            || obj.is_instance_of::<PyTuple>();
        if !container {
            return Ok(None);
        }
        if depth >= MAX_DEPTH {
            return Err(WalkError::Refused {
                reason: format!("nested deeper than {MAX_DEPTH} levels"),
                path: Vec::new(),
            });
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            // A snapshot of the items: the dict may change while the GIL is released for a long
            // string, and iterating a dict that changes size is an error.
            let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = d.items().extract()?;
            let mut changed: Vec<Replacement<'py>> = Vec::new();
            for (i, (k, v)) in items.iter().enumerate() {
                let new_k = self
                    .walk(k, scratch, counts, depth + 1)
                    .map_err(|e| e.at(|| Segment::Key(key_text(k))))?;
                let mut new_v = None;
                if let (Ok(ks), Ok(vs)) = (k.cast::<PyString>(), v.cast::<PyString>()) {
                    if let (Ok(kt), Ok(vt)) = (ks.to_str(), vs.to_str()) {
                        if self.is_secret_key(kt) && scrub::accept_value(vt) {
                            if let Some(c) = self.assignment.and_then(|a| counts.get_mut(a)) {
                                *c += 1;
                            }
                            new_v = Some(PyString::new(py, scrub::REDACTED).into_any());
                        }
                    }
                }
                if new_v.is_none() {
                    new_v = match self.walk(v, scratch, counts, depth + 1) {
                        Ok(nv) => nv,
                        Err(e) => {
                            let key = new_k.as_ref().unwrap_or(k);
                            return Err(e.at(|| Segment::Key(key_text(key))));
                        }
                    };
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
            for (i, (k, v)) in items.into_iter().enumerate() {
                match next.next_if(|(j, _, _)| *j == i) {
                    Some((_, nk, nv)) => out.set_item(nk.unwrap_or(k), nv.unwrap_or(v))?,
                    None => out.set_item(k, v)?,
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
    ) -> Result<Option<Vec<Bound<'py, PyAny>>>, WalkError> {
        let mut seen: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut changed = false;
        for (i, v) in items.enumerate() {
            match self.walk(&v, scratch, counts, depth + 1) {
                Ok(Some(nv)) => {
                    changed = true;
                    seen.push(nv);
                }
                Ok(None) => seen.push(v),
                Err(e) => return Err(e.at(|| Segment::Index(i))),
            }
        }
        Ok(changed.then_some(seen))
    }

    fn is_secret_key(&self, key: &str) -> bool {
        key.len() <= 64 && rules::may_be_secret_key(key) && self.key_regex.is_match(key)
    }
}

/// A dict key as written in a path: the text of a string key, else its `repr`.
fn key_text(key: &Bound<'_, PyAny>) -> String {
    match key.cast::<PyString>() {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => key
            .repr()
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default(),
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
    /// Build from literal secrets (the caller picks them) and rule sets, in priority order.
    #[new]
    #[pyo3(signature = (secrets, rules))]
    fn new(secrets: Vec<String>, rules: Vec<PyRef<'_, PyRuleSet>>) -> PyResult<Self> {
        let all: Vec<rules::Rule> = rules.iter().flat_map(|s| s.rules.iter().cloned()).collect();
        let inner =
            scrub::Scrubber::with_rules(&secrets, all).map_err(|e| PyValueError::new_err(e.0))?;
        let key_regex = regex_automata::meta::Regex::new(&rules::secret_key_pattern())
            .map_err(|e| PyRuntimeError::new_err(format!("invalid key pattern: {e}")))?;
        let assignment = inner.rule_names().iter().position(|n| n == "assignment");
        Ok(Self {
            inner: Arc::new(inner),
            key_regex,
            pool: Arc::default(),
            assignment,
        })
    }

    /// Rule names, as used in the counts.
    #[getter]
    fn rule_names(&self) -> Vec<String> {
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
        let out = out
            .map_err(|e| e.into_py(py))?
            .unwrap_or_else(|| obj.clone());
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

/// Whether an environment variable of this name holds a secret (its value is then scrubbed).
#[pyfunction]
fn is_secret_env_name(name: &str) -> bool {
    scrub::is_secret_env_name(name)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("REDACTED", scrub::REDACTED)?;
    m.add("MIN_ENV_SECRET_LEN", scrub::MIN_ENV_SECRET_LEN)?;
    m.add(
        "SECRET_NAME_WORDS",
        PyTuple::new(m.py(), scrub::SECRET_NAME_WORDS)?,
    )?;
    m.add("ScrubError", m.py().get_type::<ScrubError>())?;
    m.add_function(wrap_pyfunction!(is_secret_env_name, m)?)?;
    m.add_class::<PyScrubber>()?;
    m.add_class::<PyStreamScrubber>()?;
    m.add_class::<PyRuleSet>()?;
    Ok(())
}
