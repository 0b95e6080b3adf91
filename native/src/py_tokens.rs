//! Python bindings of the token counter.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::{tokens, DETACH_BYTES};

fn token_err(e: tokens::TokenError) -> PyErr {
    match e {
        tokens::TokenError::UnknownEncoding(_) => PyValueError::new_err(e.to_string()),
        tokens::TokenError::Integrity(_) | tokens::TokenError::Build(_) => {
            PyRuntimeError::new_err(e.to_string())
        }
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ENCODINGS", tokens::ENCODINGS.to_vec())?;
    m.add_function(wrap_pyfunction!(count_text, m)?)?;
    m.add_function(wrap_pyfunction!(count_texts, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(encoding_ranks, m)?)?;
    Ok(())
}
