//! Clients: reqwest with an explicit `Host`, and a raw HTTP/1.1 client for requests a
//! well-behaved client library would not send as written.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No test request may take longer than this (the longest backend delay is 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-revision` header a [`crate::Backend`] sets: which revision answered.
    pub fn revision(&self) -> Option<&str> {
        self.header("x-revision")
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status, self.body
            )
        })
    }

    /// A header as the backend received it (from its JSON echo): lowercase name, repeated
    /// headers joined by ", ".
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_owned)
    }

    /// Every header the backend received, lowercase name → value.
    pub fn upstream_headers(&self) -> serde_json::Map<String, Value> {
        self.json()["headers"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }
}

/// A client with its own connection pool (keep-alive), no proxy from the environment.
pub fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build a reqwest client")
}

/// `GET url` with `Host: host` and extra headers, on a fresh client.
pub async fn get(url: &str, host: &str, headers: &[(&str, &str)]) -> Response {
    send(&new_client(), url, host, headers).await
}

/// `GET url` with `Host: host` and extra headers, on `client` (reusing its connections).
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Response {
    try_send(client, url, host, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url} (Host: {host}): {e}"))
}

/// `GET url` like [`send`], but a transport error (refused, reset, closed before the
/// answer, timeout) is returned as text instead of panicking: for tests that count them.
pub async fn try_send(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let mut req = client.get(url);
    if !host.is_empty() {
        req = req.header(http::header::HOST, host);
    }
    for (k, v) in headers {
        req = req.header(
            HeaderName::from_bytes(k.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(v).expect("a valid header value"),
        );
    }
    let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("reading the body: {e:?}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A port on 127.0.0.1 that refuses connections: bound, then released at once.
pub fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:PORT` of a [`dead_port`], as written in a revision's `endpoints`.
pub fn dead_endpoint() -> String {
    format!("127.0.0.1:{}", dead_port())
}

/// Sends `request` exactly as written over a new connection and reads one response
/// (by `Content-Length`, chunked, or to the close). Write `\r\n` line ends yourself.
pub async fn raw_request(addr: SocketAddr, request: &str) -> Response {
    tokio::time::timeout(REQUEST_TIMEOUT, raw_request_inner(addr, request))
        .await
        .unwrap_or_else(|_| panic!("raw request to {addr} timed out"))
}

async fn raw_request_inner(addr: SocketAddr, request: &str) -> Response {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_more(&mut s, &mut buf).await == 0 {
            panic!(
                "connection closed before a full response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header line {line:?}"));
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(v.trim()).expect("header value"),
        );
    }
    let mut rest = buf[head_end + 4..].to_vec();
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length: Option<usize> = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        read_chunked(&mut s, rest).await
    } else if let Some(n) = length {
        while rest.len() < n {
            if read_more(&mut s, &mut rest).await == 0 {
                panic!("connection closed after {} of {n} body bytes", rest.len());
            }
        }
        rest.truncate(n);
        rest
    } else {
        while read_more(&mut s, &mut rest).await > 0 {}
        rest
    };
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

async fn read_chunked(s: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            assert!(
                read_more(s, &mut buf).await > 0,
                "closed inside a chunk size"
            );
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = size_text
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let size = usize::from_str_radix(&size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, end with an empty line; not needed by the tests.
            return body;
        }
        while buf.len() < size + 2 {
            assert!(read_more(s, &mut buf).await > 0, "closed inside a chunk");
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
