//! Python bindings of the routing classifier's cue scan.

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::cues;

/// A cue: its key and its points as (category index, weight).
type CueEntries = Vec<(String, Vec<(usize, f64)>)>;
/// Literal markers: (text, category index, weight, label).
type CueMarkers = Vec<(String, usize, f64, String)>;
/// Patterns: (Rust pattern, gates, category index, weight, label).
type CuePatterns = Vec<(String, Vec<cues::Gate>, usize, f64, String)>;
/// Per category, the points scored and the strongest cues as (points, label).
type ScanResult = (Vec<f64>, Vec<Vec<(f64, String)>>);

/// The routing classifier's cue tables, compiled once; `scan_prompt` scores one prompt.
#[pyclass(module = "iir._native", name = "CueScanner", frozen)]
struct PyCueScanner {
    inner: cues::Scanner,
}

/// The text of a Python string; lone surrogates (not UTF-8) become U+FFFD, one per code point,
/// which the scan classes as Python classes a surrogate (no letter, digit or space).
fn text_of<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, str>> {
    if let Ok(t) = s.to_str() {
        return Ok(Cow::Borrowed(t));
    }
    let raw = s.call_method1("encode", ("utf-32-le", "surrogatepass"))?;
    let bytes = raw.cast::<PyBytes>()?.as_bytes();
    Ok(Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| {
                let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    ))
}

#[pymethods]
impl PyCueScanner {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (categories, words, stems, cjk, markers, patterns, clause_chars, wide_ranges, weights))]
    fn new(
        categories: usize,
        words: CueEntries,
        stems: CueEntries,
        cjk: CueEntries,
        markers: CueMarkers,
        patterns: CuePatterns,
        clause_chars: String,
        wide_ranges: Vec<(u32, u32)>,
        weights: (f64, f64, f64, f64, f64),
    ) -> PyResult<Self> {
        let (text_weight, system_weight, section_cap, lead_bonus, end_bonus) = weights;
        let tables = cues::Tables {
            words,
            stems,
            cjk,
            markers,
            patterns,
            wide_chars: wide_ranges,
            clause_ends: clause_chars,
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

    /// Per category, the points scored and the strongest cues as (points, label).
    #[pyo3(signature = (head, tail, system, top = 3))]
    fn scan_prompt(
        &self,
        head: &Bound<'_, PyString>,
        tail: &Bound<'_, PyString>,
        system: &Bound<'_, PyString>,
        top: usize,
    ) -> PyResult<ScanResult> {
        let (head, tail, system) = (text_of(head)?, text_of(tail)?, text_of(system)?);
        let s = self.inner.scan_prompt(&head, &tail, &system, top);
        Ok((s.total, s.cues))
    }
}

/// The character classes of the cue scan as code-point ranges (`word`: Python's `\w`, `space`:
/// its `\s`, `digit`: `\d`), for tests that hold them to Python's own.
#[pyfunction]
fn cue_char_classes(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (name, class) in [
        ("word", cues::PY_WORD),
        ("space", cues::PY_SPACE),
        ("digit", cues::PY_DIGIT),
    ] {
        d.set_item(
            name,
            cues::class_ranges(class).map_err(PyValueError::new_err)?,
        )?;
    }
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCueScanner>()?;
    m.add_function(wrap_pyfunction!(cue_char_classes, m)?)?;
    Ok(())
}
