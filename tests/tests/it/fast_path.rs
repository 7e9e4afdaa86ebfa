//! The fast path (the default of `weir proxy`, docs/performance.md#the-fast-path) against
//! pingora's proxy path (`--no-fast-path`), differentially: the same bytes in must give the
//! same request upstream and the same answer out (but its `Date`). Two Weirs with the same
//! config, one with each, each in front of its own recording backend; a few hundred requests drawn
//! with a fixed seed from valid, odd and hostile pieces (smuggling shapes included) are sent
//! to both, on kept-alive connections (a quarter of them pipelined), against backends
//! answering in every framing.
//!
//! Run more cases with `WEIR_DIFF_CASES=20000 cargo test -p weir-tests --test it fast_path::`
//! (and another `WEIR_DIFF_SEED`).

use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::{weir_bin, Weir};

/// What each backend received, by the `X-Case` header of the request: the raw bytes, in
/// order (a case that sends two requests has two entries).
type Received = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// A backend that records every request's bytes (head and body as framed on the wire) and
/// answers in the shape its `X-Shape` header asks for.
async fn recording_backend() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, rec.clone()));
        }
    });
    (addr, received)
}

async fn serve(mut s: TcpStream, received: Received) {
    let mut buf = Vec::new();
    loop {
        let Some((raw, head)) = read_request(&mut s, &mut buf).await else {
            return;
        };
        let case = head.header("x-case").unwrap_or_default();
        received.lock().unwrap().entry(case).or_default().push(raw);
        let shape: usize = head
            .header("x-shape")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (answer, close) = shape_answer(shape, head.method == "HEAD");
        // Odd shapes go out in two writes (head, then the rest), so that the proxy reads an
        // answer in pieces.
        let split = if shape % 2 == 1 {
            find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4)
        } else {
            answer.len()
        };
        if s.write_all(&answer[..split]).await.is_err() {
            return;
        }
        let _ = s.flush().await;
        if s.write_all(&answer[split..]).await.is_err() || close {
            return;
        }
    }
}

/// An answer in one of the framings a backend may use; `true`: close after it.
fn shape_answer(shape: usize, head: bool) -> (Vec<u8>, bool) {
    let body = |b: &'static str| if head { "" } else { b };
    let a: (String, bool) = match shape % SHAPES {
        0 => (format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", body("hello")), false),
        1 => (
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n{}",
                body("3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
            ),
            false,
        ),
        // Delimited by the close: pingora re-frames it chunked.
        2 => (format!("HTTP/1.1 200 OK\r\nX-B: 2\r\n\r\n{}", body("until close")), true),
        3 => (format!("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n{}", body("old")), true),
        4 => ("HTTP/1.1 204 No Content\r\nX-C: 3\r\n\r\n".into(), false),
        5 => ("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n".into(), false),
        // Repeated and interleaved names, odd case, a Connection the proxy replaces.
        6 => (
            format!(
                "HTTP/1.1 200 OK\r\nx-dup: 1\r\nSet-Cookie: a=1\r\nX-Dup: 2\r\nset-cookie: b=2\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
                body("ok")
            ),
            true,
        ),
        7 => (
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}",
                body("cont")
            ),
            false,
        ),
        8 => (
            format!(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}",
                body("ka")
            ),
            false,
        ),
        9 => (format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\n{}", body("busy")), false),
        10 => (format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n{}", body("twice")), false),
        // Framing a proxy must not pass on as it is.
        11 => (format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{}", body("3\r\nabc\r\n0\r\n\r\n")), false),
        12 => (format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", body("bad")), true),
        // Chunk extensions and a trailer section.
        13 => (
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n{}",
                body("4;ext=1\r\nwith\r\n0\r\nX-T: 1\r\n\r\n")
            ),
            false,
        ),
        _ => (
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{}",
                body("1\r\nz\r\n0\r\n\r\n")
            ),
            false,
        ),
    };
    (a.0.into_bytes(), a.1)
}

const SHAPES: usize = 15;

struct Head {
    method: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// One request off a backend connection: its raw bytes and parsed head (body by
/// Content-Length or chunked). `None` when the connection ends.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Head)> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if read_more(s, buf).await == 0 {
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_len]).ok()?;
    let head = Head {
        method: req.method?.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"));
    let len = if chunked {
        let mut at = head_len;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break at + i;
                }
                if read_more(s, buf).await == 0 {
                    return None;
                }
            };
            let size_str = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2 + size + 2;
            while buf.len() < at {
                if read_more(s, buf).await == 0 {
                    return None;
                }
            }
            if size == 0 {
                break at;
            }
        }
    } else {
        // `5, 5` (identical values, which pingora accepts and passes on) counts as 5.
        let cl: usize = head
            .header("content-length")
            .and_then(|v| v.split(',').next()?.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + cl {
            if read_more(s, buf).await == 0 {
                return None;
            }
        }
        head_len + cl
    };
    let raw: Vec<u8> = buf.drain(..len).collect();
    Some((raw, head))
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// xorshift64*: the cases are the same on every run for a seed, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One request's bytes: method, target, version and headers drawn from pieces that are
/// valid, unusual or hostile. `case` and `shape` go in headers for the backend.
fn request(rng: &mut Rng, case: usize, last: bool) -> Vec<u8> {
    const METHODS: &[&str] = &[
        "GET", "GET", "GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH", "get",
        "CONNECT", "TRACE",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/a/b?c=d&e",
        "/%2e%2e/x",
        "/x y",
        "http://hello.default.example.com/abs",
        "http://other.example.com/abs",
        "*",
        "/q?\"quoted\"",
        "//double",
    ];
    const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"];
    const HOSTS: &[&str] = &[
        "Host: hello.default.example.com\r\n",
        "Host: current-hello.default.example.com\r\n",
        "Host: HELLO.default.example.com:80\r\n",
        "host: hello.default.example.com.\r\n",
        "Host: nowhere.example.com\r\n",
        "",
        "Host: hello.default.example.com\r\nHost: other.example.com\r\n",
        "Host: hello.default.example.com@evil\r\n",
    ];
    const EXTRAS: &[&str] = &[
        "Connection: keep-alive\r\n",
        "Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\n",
        "Connection: close\r\n",
        "Keep-Alive: timeout=5\r\n",
        "Proxy-Connection: keep-alive\r\n",
        "TE: trailers\r\n",
        "TE: gzip\r\n",
        "Upgrade: websocket\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        "X-Forwarded-For: 10.0.0.1\r\n",
        "X-Forwarded-Proto: https\r\n",
        "K-Proxy-Request: activator\r\n",
        "Knative-Serving-Revision: spoofed\r\n",
        "x-request-id: abc\r\nUser-Agent: diff/1\r\n",
        "Expect: 100-continue\r\n",
        "Cookie: a=b; c=d\r\nCookie: e=f\r\n",
        "X-Dup: 1\r\nx-dup: 2\r\n",
        "X-Empty:\r\n",
        "X-Fold: a\r\n b\r\n",
        "X-Bad\u{1}: 1\r\n",
        "Accept: */*\r\n",
        "Content-Length: 0\r\n",
        "Trailer: X-T\r\n",
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    ];
    // Bodies, framing included (the smuggling shapes among them).
    const BODIES: &[(&str, &str)] = &[
        ("", ""),
        ("", ""),
        ("", ""),
        ("Content-Length: 5\r\n", "hello"),
        ("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ("Content-Length: 5, 5\r\n", "hello"),
        ("Content-Length: +5\r\n", "hello"),
        ("Transfer-Encoding: xchunked\r\n", ""),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "",
        ),
        ("Content-Length: 0\r\n", ""),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    // Half the cases from the first, plain pieces of each list (what the fast path serves,
    // mostly), half from all of them.
    let hostile = rng.chance(50);
    let mut pick =
        |list_len: usize, plain: usize| rng.below(if hostile { list_len } else { plain });
    let method = METHODS[pick(METHODS.len(), 7)];
    let target = TARGETS[pick(TARGETS.len(), 3)];
    let version = VERSIONS[pick(VERSIONS.len(), 4)];
    let host = HOSTS[pick(HOSTS.len(), 3)];
    let extras: Vec<&str> = (0..pick(4, 3))
        .map(|_| EXTRAS[pick(EXTRAS.len(), 14)])
        .collect();
    let (framing, body) = BODIES[pick(BODIES.len(), 3)];
    let mut head = format!("{method} {target} {version}\r\n{host}");
    for extra in extras {
        head += extra;
    }
    head += framing;
    head += &format!("X-Case: {case}\r\nX-Shape: {}\r\n", rng.below(SHAPES));
    if last {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// What a client saw for one request: the answer's head without `Date` (its value is the
/// clock's), and its body decoded; `None` when the connection ended first.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Reads one answer from `s` (the request was a HEAD when `head_request`); interim 1xx
/// answers are kept in the head.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Option<Seen> {
    let mut heads = String::new();
    loop {
        let head_len = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i + 4;
            }
            if read_more(s, buf).await == 0 {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let without_date: String = head
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        heads += &without_date;
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let lower = head.to_ascii_lowercase();
        let header = |name: &str| {
            lower
                .split("\r\n")
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if header("transfer-encoding:").is_some_and(|v| v.ends_with("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    if read_more(s, buf).await == 0 {
                        return None;
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..line_end])
                        .split(';')
                        .next()?
                        .trim(),
                    16,
                )
                .ok()?;
                while buf.len() < line_end + 2 + size + 2 {
                    if read_more(s, buf).await == 0 {
                        return None;
                    }
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else if let Some(cl) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < cl {
                if read_more(s, buf).await == 0 {
                    return None;
                }
            }
            buf.drain(..cl).collect()
        } else {
            while read_more(s, buf).await > 0 {}
            std::mem::take(buf)
        };
        return Some(Seen { head: heads, body });
    }
}

/// Sends each connection's requests one after another (each after the previous answer),
/// returns what was seen per request.
async fn run(addr: SocketAddr, conns: &[Conn]) -> HashMap<usize, Option<Seen>> {
    let mut seen = HashMap::new();
    for conn in conns {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let mut open = true;
        if conn.pipelined {
            let all: Vec<u8> = conn.requests.iter().flat_map(|r| r.1.clone()).collect();
            open = s.write_all(&all).await.is_ok();
        }
        for (case, bytes, head_request) in &conn.requests {
            if !open {
                seen.insert(*case, None);
                continue;
            }
            let sent = conn.pipelined || s.write_all(bytes).await.is_ok();
            let answer = if !sent {
                None
            } else {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    read_answer(&mut s, &mut buf, *head_request),
                )
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "case {case}: no answer within 10 s to {:?}",
                        String::from_utf8_lossy(bytes)
                    )
                })
            };
            open = answer
                .as_ref()
                .is_some_and(|a| !a.head.to_ascii_lowercase().contains("connection: close"));
            seen.insert(*case, answer);
        }
    }
    seen
}

/// One client connection's requests (case, bytes, whether it is a HEAD), sent one after
/// another's answer, or all at once (`pipelined`).
struct Conn {
    pipelined: bool,
    requests: Vec<(usize, Vec<u8>, bool)>,
}

/// The differential test's configurations: a service with a tag (Weir's defaults otherwise),
/// and the general form with what changes the upstream request — a path rule adding a header
/// and rewriting the host, a split adding one, a client's `X-Forwarded-Proto` kept, no
/// `X-Forwarded-For`, reporting to an autoscaler (`K-Proxy-Request: activator`).
fn config(backend: SocketAddr, general: bool) -> serde_json::Value {
    let revisions = json!([{"name": "hello-00001", "endpoints": [backend.to_string()]}]);
    if !general {
        return json!({
            "services": [{"name": "hello", "traffic": [
                {"revision": "hello-00001", "percent": 100, "tag": "current"}
            ]}],
            "revisions": revisions,
        });
    }
    json!({
        "ingresses": [{"name": "hello", "rules": [{
            "hosts": ["hello.default.example.com", "current-hello.default.example.com"],
            "paths": [
                {"path": "/a", "append_headers": {"x-route": "v2"},
                 "rewrite_host": "api-v2.internal",
                 "splits": [{"revision": "hello-00001", "percent": 100,
                             "append_headers": {"x-split": "b"}}]},
                {"path": "", "splits": [{"revision": "hello-00001", "percent": 100}]},
            ],
        }]}],
        "revisions": revisions,
        "forwarded": {"use_remote_address": false, "trusted_hops": 1},
        // Nothing listens there: Weir reports (and sets `K-Proxy-Request`) all the same.
        "autoscaler": {"url": "ws://127.0.0.1:9/"},
    })
}

fn weir_with(backend: SocketAddr, fast: bool, general: bool) -> Weir {
    let mut b = Weir::builder(weir_bin!(), &config(backend, general)).path_as_given();
    if !fast {
        b = b.arg("--no-fast-path");
    }
    b.start()
}

/// Requests the fast path served (`weir_fast_path_requests_total`, exported from the start).
async fn served_fast(weir: &Weir) -> f64 {
    weir.metric("weir_fast_path_requests_total", &[])
        .await
        .expect("weir_fast_path_requests_total is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_in_same_request_upstream_and_same_answer_out() {
    differential(false).await;
}

/// The same with the general form's rules, a trusted hop and reporting ([`config`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_in_same_request_upstream_and_same_answer_out_with_rules() {
    differential(true).await;
}

async fn differential(general: bool) {
    let cases: usize = std::env::var("WEIR_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("WEIR_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001);
    let mut rng = Rng(seed);
    // Connections of 1 to 4 requests, a quarter of them pipelined; the last request of each
    // says `Connection: close`.
    let mut conns = Vec::new();
    let mut case = 0;
    while case < cases {
        let n = 1 + rng.below(4);
        let requests: Vec<_> = (0..n)
            .map(|i| {
                let bytes = request(&mut rng, case + i, i + 1 == n);
                let head_request = bytes.starts_with(b"HEAD ");
                (case + i, bytes, head_request)
            })
            .collect();
        case += n;
        // Not behind a target pingora has to escape (`/x y`): there the proxy path reads the
        // next request's bytes while proxying and answers 400, where the fast path serves both
        // (docs/behaviour.md "The fast path").
        let escaped = requests.iter().any(|r| find(&r.1, b" /x y ").is_some());
        conns.push(Conn {
            pipelined: n > 1 && !escaped && rng.chance(25),
            requests,
        });
    }
    let (addr_p, rec_p) = recording_backend().await;
    let (addr_f, rec_f) = recording_backend().await;
    let proxy = weir_with(addr_p, false, general);
    let fast = weir_with(addr_f, true, general);
    let seen_p = run(proxy.http_addr(), &conns).await;
    let seen_f = run(fast.http_addr(), &conns).await;
    let mut mismatches = Vec::new();
    for conn in &conns {
        for (case, bytes, _) in &conn.requests {
            let key = case.to_string();
            let up_p = rec_p.lock().unwrap().get(&key).cloned();
            let up_f = rec_f.lock().unwrap().get(&key).cloned();
            if up_p != up_f || seen_p[case] != seen_f[case] {
                mismatches.push(format!(
                    "case {case}: request {:?}\n  upstream (proxy): {:?}\n  upstream (fast):  {:?}\n  answer (proxy): {:?}\n  answer (fast):  {:?}",
                    String::from_utf8_lossy(bytes),
                    up_p.map(|v| v.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>()),
                    up_f.map(|v| v.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>()),
                    seen_p[case],
                    seen_f[case],
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {cases} cases differ:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
    // Both paths were exercised: of the requests that reached a backend, the fast path
    // served about half, the proxy the rest.
    let served = served_fast(&fast).await;
    let reached: usize = rec_f.lock().unwrap().values().map(Vec::len).sum();
    assert!(
        served > reached as f64 / 3.0 && served < reached as f64,
        "the fast path served {served} of the {reached} requests that reached a backend"
    );
    assert_eq!(served_fast(&proxy).await, 0.0);
}

/// What the fast path takes and what it leaves to the proxy, by the counter: a GET and a
/// POST with a small body are its own, a body over 64 KiB, a chunked one and an upgrade are
/// the proxy's; every one is answered the same either way (the backend saw the whole body).
#[tokio::test]
async fn small_bodies_take_the_fast_path_large_and_chunked_ones_the_proxy() {
    let backend = weir_tests::Backend::start("hello-00001");
    let config = json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.addr().to_string()]}],
    });
    let weir = Weir::builder(weir_bin!(), &config).path_as_given().start();
    let client = weir_tests::new_client();
    let url = format!("{}/", weir.http_url());
    let host = "hello.default.example.com";
    let served = || served_fast(&weir);
    let post = |body: reqwest::Body| client.post(&url).header("Host", host).body(body).send();
    let get = client.get(&url).header("Host", host).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(served().await, 1.0);

    let small = post(vec![b'a'; 10 * 1024].into()).await.unwrap();
    assert_eq!(small.status(), 200);
    let echoed: serde_json::Value = small.json().await.unwrap();
    assert_eq!(echoed["body_len"], 10 * 1024);
    assert_eq!(served().await, 2.0);

    let large = post(vec![b'b'; 100 * 1024].into()).await.unwrap();
    assert_eq!(large.status(), 200);
    let echoed: serde_json::Value = large.json().await.unwrap();
    assert_eq!(echoed["body_len"], 100 * 1024);
    let chunked = weir_tests::raw_request(
        weir.http_addr(),
        &format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.json()["body_len"], 4);
    assert_eq!(
        served().await,
        2.0,
        "the large and the chunked body went the proxy's way"
    );
}
