//! Python bindings of the upstream client (`iir.backends.providers.client` drives them).
//!
//! Calls start a Tokio task and return a [`PyTask`] at once; the outcome arrives on the
//! [`PyPort`] given, keyed by the caller's id, and the event loop collects it with
//! `CompletionPort.drain()` when the port's socket is readable. `Task.abort()` drops the
//! request's future, closing its connection.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

use crate::http::{self, port::Port, sse, Failure, Head, Opened};

create_exception!(
    _native,
    UpstreamError,
    PyException,
    "The upstream exchange failed."
);
create_exception!(
    _native,
    UpstreamConnectError,
    UpstreamError,
    "No connection, or it broke before the answer was read whole."
);
create_exception!(
    _native,
    UpstreamTimeout,
    UpstreamError,
    "A deadline passed."
);
create_exception!(
    _native,
    UpstreamTooLarge,
    UpstreamError,
    "The answer, or a line of its event stream, is over its cap."
);

type Shared = Arc<Mutex<Option<Box<http::Stream>>>>;

enum Outcome {
    Exchange(Result<(Head, Vec<u8>), Failure>),
    Opened(Result<Opened, Failure>),
    Events(Result<(Vec<sse::Event>, bool), Failure>),
}

#[pyclass(module = "iir._native", name = "CompletionPort", frozen)]
pub struct PyPort {
    inner: Arc<Port<Outcome>>,
}

#[pymethods]
impl PyPort {
    #[new]
    fn new() -> PyResult<Self> {
        let inner = Port::new().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(PyPort {
            inner: Arc::new(inner),
        })
    }

    fn fileno(&self) -> i32 {
        self.inner.fileno()
    }

    /// `[(id, result or exception instance), ...]` for every outcome ready now.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ready = self.inner.drain();
        let out = PyList::empty(py);
        for (id, outcome) in ready {
            let value = match outcome {
                Outcome::Exchange(r) => r.map(|(head, body)| {
                    let (status, headers) = head_py(py, head);
                    (status, headers, PyBytes::new(py, &body))
                        .into_pyobject(py)
                        .map(|t| t.into_any())
                }),
                Outcome::Opened(r) => r.map(|opened| opened_py(py, opened)),
                Outcome::Events(r) => r.map(|(events, done)| {
                    (events_py(py, events), done)
                        .into_pyobject(py)
                        .map(|t| t.into_any())
                }),
            };
            let value = match value {
                Ok(v) => v?,
                Err(f) => failure_py(py, f),
            };
            out.append((id, value))?;
        }
        Ok(out)
    }
}

fn head_py(py: Python<'_>, head: Head) -> (u16, Bound<'_, PyList>) {
    let headers = PyList::empty(py);
    for (k, v) in head.headers {
        let _ = headers.append((k, v));
    }
    (head.status, headers)
}

fn events_py(py: Python<'_>, events: Vec<sse::Event>) -> Bound<'_, PyList> {
    let out = PyList::empty(py);
    for (name, data) in events {
        let _ = out.append((name, PyBytes::new(py, &data)));
    }
    out
}

/// `(status, headers, body or None, stream or None, events)`.
fn opened_py(py: Python<'_>, opened: Opened) -> PyResult<Bound<'_, PyAny>> {
    match opened {
        Opened::Refused(head, body) => {
            let (status, headers) = head_py(py, head);
            let items: [Bound<'_, PyAny>; 5] = [
                status.into_pyobject(py)?.into_any(),
                headers.into_any(),
                PyBytes::new(py, &body).into_any(),
                py.None().into_bound(py),
                PyList::empty(py).into_any(),
            ];
            Ok(PyTuple::new(py, items)?.into_any())
        }
        Opened::Events {
            head,
            events,
            stream,
        } => {
            let (status, headers) = head_py(py, head);
            let stream = match stream {
                Some(s) => Bound::new(
                    py,
                    PyStream {
                        shared: Arc::new(Mutex::new(Some(s))),
                    },
                )?
                .into_any(),
                None => py.None().into_bound(py),
            };
            let items: [Bound<'_, PyAny>; 5] = [
                status.into_pyobject(py)?.into_any(),
                headers.into_any(),
                py.None().into_bound(py),
                stream,
                events_py(py, events).into_any(),
            ];
            Ok(PyTuple::new(py, items)?.into_any())
        }
    }
}

fn failure_py(py: Python<'_>, f: Failure) -> Bound<'_, PyAny> {
    let err = match f {
        Failure::Connect(kind) => UpstreamConnectError::new_err(kind),
        Failure::Timeout => UpstreamTimeout::new_err("timed out"),
        Failure::TooLarge => UpstreamTooLarge::new_err("over the cap"),
        Failure::Invalid(msg) => PyValueError::new_err(msg),
    };
    err.into_value(py).into_bound(py).into_any()
}

/// A running exchange; `abort()` drops it (and closes its connection).
#[pyclass(module = "iir._native", name = "UpstreamTask", frozen)]
pub struct PyTask {
    handle: AbortHandle,
}

#[pymethods]
impl PyTask {
    fn abort(&self) {
        self.handle.abort();
    }
}

fn method(name: &str) -> PyResult<reqwest::Method> {
    reqwest::Method::from_bytes(name.as_bytes())
        .map_err(|_| PyValueError::new_err(format!("invalid HTTP method {name:?}")))
}

/// One provider's pooled client.
#[pyclass(module = "iir._native", name = "UpstreamClient", frozen)]
pub struct PyClient {
    client: reqwest::Client,
    rt: Arc<Runtime>,
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (headers, connect_timeout, pool_idle_timeout=30.0, pool_max_idle=256))]
    fn new(
        headers: Vec<(String, String)>,
        connect_timeout: f64,
        pool_idle_timeout: f64,
        pool_max_idle: usize,
    ) -> PyResult<Self> {
        let rt = http::runtime().map_err(PyRuntimeError::new_err)?;
        let cfg = http::Config {
            headers,
            connect_timeout,
            pool_idle_timeout,
            pool_max_idle,
        };
        // building a client may start resolver machinery that wants a runtime context
        let client = {
            let _enter = rt.enter();
            http::build(&cfg).map_err(PyValueError::new_err)?
        };
        Ok(PyClient { client, rt })
    }

    /// The whole exchange: `(status, headers, body)` on `port` under `id`; a 2xx body is read
    /// up to `limit` bytes (more is `UpstreamTooLarge`), any other up to `error_limit` bytes
    /// (the rest dropped); everything within `timeout` seconds.
    #[pyo3(signature = (port, id, method_name, url, body, headers, timeout, limit, error_limit))]
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        port: &PyPort,
        id: u64,
        method_name: &str,
        url: String,
        body: Option<&[u8]>,
        headers: Vec<(String, String)>,
        timeout: f64,
        limit: usize,
        error_limit: usize,
    ) -> PyResult<PyTask> {
        let req = http::Request {
            method: method(method_name)?,
            url,
            body: body.map(Bytes::copy_from_slice),
            headers,
        };
        let client = self.client.clone();
        let port = port.inner.clone();
        let task = self.rt.spawn(async move {
            let r = http::exchange(client, req, http::secs(timeout), limit, error_limit).await;
            port.push(id, Outcome::Exchange(r));
        });
        Ok(PyTask {
            handle: task.abort_handle(),
        })
    }

    /// POSTs and reads up to the first event of the answer's event stream, within `timeout`:
    /// `(status, headers, body, stream, events)`. A 2xx `text/event-stream` answer gives
    /// `body` None, its first `events` and the `stream` to read on (None when it ended); any
    /// other answer gives its first `error_limit` bytes as `body`.
    #[pyo3(signature = (port, id, url, body, headers, timeout, error_limit, max_line))]
    #[allow(clippy::too_many_arguments)]
    fn open_stream(
        &self,
        port: &PyPort,
        id: u64,
        url: String,
        body: &[u8],
        headers: Vec<(String, String)>,
        timeout: f64,
        error_limit: usize,
        max_line: usize,
    ) -> PyTask {
        let req = http::Request {
            method: reqwest::Method::POST,
            url,
            body: Some(Bytes::copy_from_slice(body)),
            headers,
        };
        let client = self.client.clone();
        let port = port.inner.clone();
        let task = self.rt.spawn(async move {
            let r =
                http::open_stream(client, req, http::secs(timeout), error_limit, max_line).await;
            port.push(id, Outcome::Opened(r));
        });
        PyTask {
            handle: task.abort_handle(),
        }
    }
}

/// An event stream being read: `next()` gives `(events, done)` with at least one event unless
/// done; `close()` drops the connection.
#[pyclass(module = "iir._native", name = "UpstreamStream", frozen)]
pub struct PyStream {
    shared: Shared,
}

#[pymethods]
impl PyStream {
    fn next(&self, port: &PyPort, id: u64, timeout: f64) -> PyResult<PyTask> {
        let rt = http::runtime().map_err(PyRuntimeError::new_err)?;
        let shared = self.shared.clone();
        let port = port.inner.clone();
        let task = rt.spawn(async move {
            let taken = shared.lock().ok().and_then(|mut s| s.take());
            let r = match taken {
                None => Ok((Vec::new(), true)),
                Some(mut stream) => {
                    let r = stream.next(http::secs(timeout)).await;
                    if matches!(r, Ok((_, false))) {
                        if let Ok(mut s) = shared.lock() {
                            *s = Some(stream);
                        }
                    }
                    r
                }
            };
            port.push(id, Outcome::Events(r));
        });
        Ok(PyTask {
            handle: task.abort_handle(),
        })
    }

    fn close(&self) {
        let taken = self.shared.lock().ok().and_then(|mut s| s.take());
        drop(taken);
    }
}

/// The SSE framing on its own, for byte streams read elsewhere: `feed(chunk)` gives the events
/// completed so far (`ValueError` for a line over `max_line`), `finish()` the last one.
#[pyclass(module = "iir._native", name = "SseParser")]
pub struct PySseParser {
    inner: sse::SseParser,
}

#[pymethods]
impl PySseParser {
    #[new]
    fn new(max_line: usize) -> Self {
        PySseParser {
            inner: sse::SseParser::new(max_line),
        }
    }

    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.inner
            .feed(chunk)
            .map_err(|_| UpstreamTooLarge::new_err("an event stream line is over its cap"))?;
        Ok(events_py(py, self.inner.take()))
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyList> {
        self.inner.finish();
        events_py(py, self.inner.take())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyPort>()?;
    m.add_class::<PyClient>()?;
    m.add_class::<PyTask>()?;
    m.add_class::<PyStream>()?;
    m.add_class::<PySseParser>()?;
    m.add("UpstreamError", py.get_type::<UpstreamError>())?;
    m.add(
        "UpstreamConnectError",
        py.get_type::<UpstreamConnectError>(),
    )?;
    m.add("UpstreamTimeout", py.get_type::<UpstreamTimeout>())?;
    m.add("UpstreamTooLarge", py.get_type::<UpstreamTooLarge>())?;
    Ok(())
}
