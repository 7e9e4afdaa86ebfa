//! Malformed and smuggling-shaped requests get a 4xx and never reach a backend
//! (docs/behaviour.md#malformed-requests).

use serde_json::json;
use weir_tests::{raw_request, start_weir, Backend};

const HOST: &str = "Host: hello.default.example.com\r\n";

#[tokio::test]
async fn malformed_requests_get_4xx_and_never_reach_the_backend() {
    let backend = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }));
    let big = "a".repeat(70 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "conflicting Content-Length",
            format!("POST / HTTP/1.1\r\n{HOST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\n{HOST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "unknown Transfer-Encoding",
            format!("POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "non-numeric Content-Length",
            format!("POST / HTTP/1.1\r\n{HOST}Content-Length: abc\r\n\r\n"),
        ),
        (
            "oversized headers",
            format!("GET / HTTP/1.1\r\n{HOST}X-Big: {big}\r\n\r\n"),
        ),
        (
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_string(),
        ),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\n{HOST}Host: other.example.com\r\n\r\n"),
        ),
        (
            "missing Host",
            "GET / HTTP/1.1\r\nX-Any: 1\r\n\r\n".to_string(),
        ),
        (
            "space before the colon",
            format!("GET / HTTP/1.1\r\n{HOST}X-Foo : bar\r\n\r\n"),
        ),
    ];
    for (what, request) in &cases {
        let r = raw_request(weir.http_addr(), request).await;
        assert!(
            (400..500).contains(&r.status),
            "{what}: expected a 4xx, got {} {:?}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        backend.requests(),
        0,
        "a malformed request reached the backend"
    );
    // A well-formed request on the same proxy still works.
    let ok = raw_request(
        weir.http_addr(),
        &format!("GET / HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(backend.requests(), 1);
}

/// Plain-text listeners also accept h2c, so a new connection is first checked for the
/// 24-byte HTTP/2 preface. A complete HTTP/1 request shorter than that must be answered at
/// once, not wait for bytes that never come (pingora 0.9.1 waited: vendor/pingora-core).
#[tokio::test]
async fn requests_shorter_than_the_h2_preface_are_answered() {
    let backend = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }));
    for request in [
        "GET / HTTP/1.1\r\n\r\n",        // 18 bytes, no Host: 400
        "GET / HTTP/1.0\r\n\r\n",        // HTTP/1.0 needs no Host: no route, 404
        "OPTIONS / HTTP/1.0\r\n\r\n",    // haproxy's default health check, 22 bytes
        "GET / HTTP/1.1\r\nA:b\r\n\r\n", // 23 bytes, one header, no Host
    ] {
        assert!(
            request.len() < 24,
            "{request:?} is not shorter than the preface"
        );
        // raw_request panics if no full answer comes within its timeout.
        let r = raw_request(weir.http_addr(), request).await;
        assert!(
            (400..500).contains(&r.status),
            "{request:?}: expected a 4xx, got {} {:?}",
            r.status,
            r.body
        );
    }
    assert_eq!(backend.requests(), 0);
    // h2c is still detected: the protocols tests run gRPC and HTTP/2 over this listener.
}

/// Answers are framed as their heads say, whatever the path (the fast path by default, the
/// proxy under `WEIR_TEST_PROXY_PATH=1`): by `Content-Length` (identical duplicates
/// reconciled), by chunked `Transfer-Encoding` over a `Content-Length`, to the close without
/// either or when chunked is not the last coding; a conflicting or unparseable
/// `Content-Length` is a 502 and the client never sees the bytes. The backend counts its
/// connections: the answers framed by length leave it reusable, and the later requests
/// reuse it.
#[tokio::test]
async fn answers_are_framed_as_their_heads_say() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (answer, close): (&str, bool) = match path.as_str() {
                        "/length" => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
                        "/twice" => (
                            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\ntwice",
                            false,
                        ),
                        "/chunked-over-length" => (
                            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
                            false,
                        ),
                        "/head" => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
                        "/to-close" => ("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the close", true),
                        "/gzip-to-close" => (
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes",
                            true,
                        ),
                        "/conflicting" => (
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nbad",
                            true,
                        ),
                        "/unparseable" => ("HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nbad", true),
                        _ => ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [addr.to_string()]}],
    }));
    let get = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n")
    };
    // Framed by length: one upstream connection for all of them.
    for (path, body) in [
        ("/length", "hello"),
        ("/twice", "twice"),
        ("/chunked-over-length", "abcde"),
        ("/length", "hello"),
    ] {
        let r = raw_request(weir.http_addr(), &get("GET", path)).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{path}");
        // Transfer-Encoding over a length: the length is dropped, never sent on beside it.
        assert!(
            !(r.headers.contains_key("content-length")
                && r.headers.contains_key("transfer-encoding")),
            "{path}: both framing fields went downstream: {:?}",
            r.headers
        );
    }
    // HEAD: the head only (read to the close: `raw_request` would wait for the body).
    let mut s = tokio::net::TcpStream::connect(weir.http_addr())
        .await
        .unwrap();
    s.write_all(get("HEAD", "/head").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("HEAD answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "HEAD: {answer:?}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "HEAD: a body after the head: {answer:?}"
    );
    assert!(answer.contains("Content-Length: 5\r\n"), "HEAD: {answer:?}");
    let r = raw_request(weir.http_addr(), &get("GET", "/length")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello"), "after HEAD");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "answers framed by length left the upstream connection reusable"
    );
    // To the close: the whole body, and the connection it ended is not reused (the next
    // request opens another).
    for (path, body) in [
        ("/to-close", "until the close"),
        ("/gzip-to-close", "raw bytes"),
    ] {
        let before = conns.load(Ordering::SeqCst);
        let r = raw_request(weir.http_addr(), &get("GET", path)).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{path}");
        let r = raw_request(weir.http_addr(), &get("GET", "/length")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello"), "after {path}");
        assert_eq!(
            conns.load(Ordering::SeqCst),
            before + 1,
            "{path}: not reused"
        );
    }
    // Ambiguous lengths never reach the client.
    for path in ["/conflicting", "/unparseable"] {
        let r = raw_request(weir.http_addr(), &get("GET", path)).await;
        assert_eq!(r.status, 502, "{path}: {:?}", r.body);
        assert!(!r.body.contains("bad"), "{path}: {:?}", r.body);
    }
}
