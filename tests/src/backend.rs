//! A stand-in for a revision's pod: HTTP/1.1 with keep-alive on 127.0.0.1:0.
//!
//! Every answer carries `x-revision: <name>` and a JSON body describing the request as it
//! arrived (`revision`, `method`, `path`, `query`, `version`, `headers`: lowercase name →
//! value, repeated headers joined by ", ").
//! Paths switch behaviour: `/status/<code>` answers that code; `/delay/<ms>` waits, then
//! answers 200; `/delay-body/<ms>` sends the 200's headers at once and its body after the
//! wait; `/fail-once/<key>` answers 503 the first time a key is asked for and 200 after
//! (Knative's retry test); anything else answers 200 at once.
//!
//! Like every Knative backend (networking's probe handler), a request with
//! `K-Network-Probe: probe` is answered 200 with its `K-Network-Hash` echoed, or 400 when it
//! has none; other requests are served as above.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Keys `/fail-once/<key>` has failed already.
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The header a Knative probe's hash travels in.
pub const HASH_HEADER: &str = "k-network-hash";

/// networking's probe handler: `Some((status, hash to echo))` for a probe request.
pub fn probe_answer(headers: &http::HeaderMap) -> Option<(StatusCode, Option<http::HeaderValue>)> {
    if headers.get("k-network-probe").map(|v| v.as_bytes()) != Some(b"probe") {
        return None;
    }
    match headers.get(HASH_HEADER).filter(|h| !h.is_empty()) {
        Some(h) => Some((StatusCode::OK, Some(h.clone()))),
        None => Some((StatusCode::BAD_REQUEST, None)),
    }
}

/// Counts a request in flight for as long as it lives (also when the client goes away).
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a Stats) -> Self {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl<'a> InFlight<'a> {
    /// Counts a request already counted as received (its body is still being sent).
    fn resume(stats: &'a Stats) -> Self {
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A test backend named after the revision it stands for. Runs on its own thread and
/// runtime, so it serves whatever the test thread is doing; stops on drop.
pub struct Backend {
    name: Arc<str>,
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::serve(
            name,
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a backend"),
        )
    }

    /// Starts one on `addr` again (a backend that was killed and comes back), waiting up to
    /// 5 s for the port to be free.
    pub fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => return Backend::serve(name, l),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebind a backend on {addr}: {e}"),
            }
        }
    }

    fn serve(name: &str, listener: std::net::TcpListener) -> Backend {
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let name: Arc<str> = Arc::from(name);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn({
                let name = name.clone();
                let stats = stats.clone();
                move || serve(listener, name, stats, rx)
            })
            .expect("spawn a backend thread");
        Backend {
            name,
            addr,
            stats,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as written in a revision's `endpoints`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far (counted when their head arrives).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u64 {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    name: Arc<str>,
    stats: Arc<Stats>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a backend runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let name = name.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, name.clone(), stats.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    // Dropping the runtime here cancels every open connection.
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<Stats>,
) -> Result<Response<Body>, Infallible> {
    let in_flight = InFlight::enter(&stats);
    if let Some((status, hash)) = probe_answer(req.headers()) {
        let mut resp = Response::builder()
            .status(status)
            .header("x-revision", &*name);
        if let Some(h) = hash {
            resp = resp.header(HASH_HEADER, h);
        }
        return Ok(resp
            .body(Full::new(Bytes::new()).boxed())
            .expect("a valid response"));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();

    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Err(_) => status = StatusCode::BAD_REQUEST,
        }
    } else if let Some(key) = path.strip_prefix("/fail-once/") {
        let first = stats
            .failed
            .lock()
            .expect("the failed set")
            .insert(key.to_owned());
        if first {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let body_delay = path
        .strip_prefix("/delay-body/")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);

    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_owned(), Value::String(v));
            }
        }
    }
    let echo = json!({
        "revision": &*name,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query().unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let text = Bytes::from(echo.to_string());
    let body = match body_delay {
        None => Full::new(text).boxed(),
        Some(wait) => {
            // Headers now, the body after `wait`; the request counts as in flight till then.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            let stats = stats.clone();
            drop(in_flight);
            tokio::spawn(async move {
                let _in_flight = InFlight::resume(&stats);
                tokio::time::sleep(wait).await;
                let _ = tx.send(Ok(Frame::data(text))).await;
            });
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
        }
    };
    let resp = Response::builder()
        .status(status)
        .header("x-revision", &*name)
        .header("content-type", "application/json")
        .body(body)
        .expect("a valid response");
    Ok(resp)
}
