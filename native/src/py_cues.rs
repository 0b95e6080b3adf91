//! Python bindings of the routing classifier's cue scan.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cues;

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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCueScanner>()?;
    Ok(())
}
