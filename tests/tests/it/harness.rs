//! The harness itself, without a proxy: the test backend, the clients, dead ports.

use std::time::Duration;

use weir_tests::{dead_port, get, raw_request, Backend};

#[tokio::test]
async fn backend_echoes_the_request() {
    let b = Backend::start("echo-00001");
    let url = format!("http://{}/a/b?c=d", b.addr());
    let r = get(
        &url,
        "some.host:1234",
        &[("x-one", "1"), ("x-two", "a"), ("x-two", "b")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.revision(), Some("echo-00001"));
    let v = r.json();
    assert_eq!(v["revision"], "echo-00001");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "c=d");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(r.upstream_header("host").as_deref(), Some("some.host:1234"));
    assert_eq!(r.upstream_header("x-one").as_deref(), Some("1"));
    assert_eq!(r.upstream_header("X-Two").as_deref(), Some("a, b"));
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn backend_status_and_delay() {
    let b = Backend::start("echo-00001");
    let r = get(&format!("http://{}/status/503", b.addr()), "x", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.revision(), Some("echo-00001"));

    let url = format!("http://{}/delay/300", b.addr());
    let slow = tokio::spawn(async move { get(&url, "x", &[]).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.in_flight() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.in_flight(), 1);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(b.in_flight(), 0);
    assert_eq!(b.max_in_flight(), 1);
    assert_eq!(b.requests(), 2);
}

#[tokio::test]
async fn raw_requests_keep_headers_as_written() {
    let b = Backend::start("echo-00001");
    let r = raw_request(
        b.addr(),
        "GET /raw HTTP/1.1\r\nHost: h\r\nConnection: x-foo\r\nx-foo: 1\r\nTE: trailers\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-foo").as_deref(), Some("1"));
    assert_eq!(r.upstream_header("connection").as_deref(), Some("x-foo"));
    assert_eq!(r.json()["path"], "/raw");
}

#[test]
fn dead_ports_refuse() {
    let port = dead_port();
    let err = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
