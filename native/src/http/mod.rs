//! The upstream HTTP client: pooled HTTP/1.1 and HTTP/2 (reqwest on hyper, TLS by rustls with the
//! system's roots) on a Tokio runtime owned by the extension.
//!
//! Every exchange runs as one Tokio task. Its outcome goes to a [`port::Port`], which wakes the
//! Python event loop through a socket it watches; no Tokio thread ever takes the GIL, so a busy
//! event loop never holds up the network side, and one wake-up delivers every outcome that is
//! ready. Aborting the task (the Python awaitable was cancelled) drops the request's future,
//! which closes its connection at once: the provider sees the client go away.
//!
//! Bounds: a body is read up to its cap and no further (counted after decompression, which is
//! done a piece at a time as the body is read), an SSE line up to its cap, and nothing waits past
//! its deadline.

pub mod port;
pub mod sse;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::runtime::Runtime;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection, or it broke before the answer was read whole: worth a retry.
    Connect(String),
    /// A deadline passed.
    Timeout,
    /// The body (or an SSE line) is longer than its cap.
    TooLarge,
    /// The request could not be built (a bad URL or header): a programming or setting error.
    Invalid(String),
}

impl Failure {
    fn from_reqwest(err: &reqwest::Error) -> Failure {
        if err.is_timeout() {
            return Failure::Timeout;
        }
        if err.is_builder() {
            return Failure::Invalid(err.to_string());
        }
        Failure::Connect(kind(err).to_string())
    }
}

/// A short, secret-free name of what went wrong (never the URL or a header).
fn kind(err: &reqwest::Error) -> &'static str {
    if err.is_connect() {
        "ConnectError"
    } else if err.is_body() || err.is_decode() {
        "PayloadError"
    } else if err.is_request() {
        "RequestError"
    } else {
        "ConnectionError"
    }
}

/// Status line and headers of an answer.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

fn head_of(resp: &reqwest::Response) -> Head {
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    Head {
        status: resp.status().as_u16(),
        headers,
    }
}

/// The runtime every client shares: one worker thread (the serving process has one event loop,
/// and the machine's other cores serve other workers). Rebuilt in a forked child, whose copy of
/// the parent's runtime has no threads.
pub fn runtime() -> Result<Arc<Runtime>, String> {
    /// The process that built the runtime, and the runtime.
    type Owned = Option<(u32, Arc<Runtime>)>;
    static RT: OnceLock<Mutex<Owned>> = OnceLock::new();
    let cell = RT.get_or_init(|| Mutex::new(None));
    let mut guard = cell
        .lock()
        .map_err(|_| "runtime lock poisoned".to_string())?;
    let pid = std::process::id();
    if let Some((owner, rt)) = guard.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("iir-upstream")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the upstream runtime: {e}"))?;
    let rt = Arc::new(rt);
    if let Some(old) = guard.replace((pid, rt.clone())) {
        // The parent's runtime: its threads do not exist here, so it must not be shut down.
        std::mem::forget(old);
    }
    Ok(rt)
}

pub struct Config {
    pub headers: Vec<(String, String)>,
    pub connect_timeout: f64,
    pub pool_idle_timeout: f64,
    pub pool_max_idle: usize,
}

fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        // the value may be a key: never put it into the message
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn install_crypto() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Another library in the process may have installed one already: either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A pooled client: redirects never followed (one would carry the provider's key to another
/// host), no proxy from the environment, gzip and deflate answers inflated as they are read.
pub fn build(cfg: &Config) -> Result<reqwest::Client, String> {
    install_crypto();
    reqwest::Client::builder()
        .default_headers(header_map(&cfg.headers)?)
        .connect_timeout(secs(cfg.connect_timeout))
        .pool_idle_timeout(secs(cfg.pool_idle_timeout))
        .pool_max_idle_per_host(cfg.pool_max_idle)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the upstream client: {e}"))
}

/// Seconds as a duration; a non-positive or absurd value means "practically never".
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 && s < 1e9 {
        Duration::from_secs_f64(s)
    } else {
        Duration::from_secs(1_000_000_000)
    }
}

pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub body: Option<Bytes>,
    pub headers: Vec<(String, String)>,
}

async fn send(client: &reqwest::Client, req: Request) -> Result<reqwest::Response, Failure> {
    let headers = header_map(&req.headers).map_err(Failure::Invalid)?;
    let mut builder = client.request(req.method, &req.url).headers(headers);
    if let Some(body) = req.body {
        builder = builder.body(body);
    }
    builder.send().await.map_err(|e| Failure::from_reqwest(&e))
}

/// The body, at most `limit` bytes: [`Failure::TooLarge`] past it, or with `truncate` the first
/// `limit` bytes (the connection is then dropped, not reused).
pub async fn read_capped(
    resp: &mut reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>, Failure> {
    if let Some(declared) = resp.content_length() {
        if declared as usize > limit && !truncate {
            return Err(Failure::TooLarge);
        }
    }
    let mut buf = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure::from_reqwest(&e))? {
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            if truncate {
                buf.truncate(limit);
                return Ok(buf);
            }
            return Err(Failure::TooLarge);
        }
    }
    Ok(buf)
}

/// A whole exchange: the answer's head and body (2xx up to `limit`, anything else up to
/// `error_limit`, truncated), all within `timeout`.
pub async fn exchange(
    client: reqwest::Client,
    req: Request,
    timeout: Duration,
    limit: usize,
    error_limit: usize,
) -> Result<(Head, Vec<u8>), Failure> {
    let work = async {
        let mut resp = send(&client, req).await?;
        let head = head_of(&resp);
        let body = if head.status >= 300 {
            read_capped(&mut resp, error_limit, true).await?
        } else {
            read_capped(&mut resp, limit, false).await?
        };
        Ok((head, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// An event stream being read.
pub struct Stream {
    resp: reqwest::Response,
    parser: sse::SseParser,
}

/// What opening a stream gave.
pub enum Opened {
    /// Not a 2xx event stream: the head and the first `error_limit` bytes of the body.
    Refused(Head, Vec<u8>),
    /// The first events (empty with `done` for a stream that ended before any).
    Events {
        head: Head,
        events: Vec<sse::Event>,
        stream: Option<Box<Stream>>,
    },
}

fn is_event_stream(head: &Head) -> bool {
    head.headers.iter().any(|(k, v)| {
        k == "content-type"
            && v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    })
}

/// Sends the request and reads up to the first event, all within `timeout`.
pub async fn open_stream(
    client: reqwest::Client,
    req: Request,
    timeout: Duration,
    error_limit: usize,
    max_line: usize,
) -> Result<Opened, Failure> {
    let work = async {
        let mut resp = send(&client, req).await?;
        let head = head_of(&resp);
        if head.status >= 300 || !is_event_stream(&head) {
            let body = read_capped(&mut resp, error_limit, true).await?;
            return Ok(Opened::Refused(head, body));
        }
        let mut stream = Stream {
            resp,
            parser: sse::SseParser::new(max_line),
        };
        let (events, done) = stream.read().await?;
        Ok(Opened::Events {
            head,
            events,
            stream: if done { None } else { Some(Box::new(stream)) },
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

impl Stream {
    /// The next events: at least one, or none and `done` at the end of the stream. Comment
    /// lines alone do not end the wait.
    pub async fn read(&mut self) -> Result<(Vec<sse::Event>, bool), Failure> {
        loop {
            if self.parser.has_events() {
                return Ok((self.parser.take(), false));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self
                    .parser
                    .feed(&chunk)
                    .map_err(|sse::LineTooLong| Failure::TooLarge)?,
                Ok(None) => {
                    self.parser.finish();
                    return Ok((self.parser.take(), true));
                }
                Err(e) => return Err(Failure::from_reqwest(&e)),
            }
        }
    }

    /// [`Stream::read`] within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<(Vec<sse::Event>, bool), Failure> {
        tokio::time::timeout(timeout, self.read())
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}
