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
