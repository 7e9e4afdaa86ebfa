//! SIGTERM drains in-flight requests, then exits 0; SIGINT exits at once (docs/api.md#signals, docs/behaviour.md#draining-and-signals).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_tests::{get, start_weir, Backend, Signal, Weir};

const HOST: &str = "hello.default.example.com";

fn hello(backend: &Backend, drain_timeout: &str) -> Weir {
    start_weir!(json!({
        "drain_timeout": drain_timeout,
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }))
}

/// Polls `cond` every 10 ms for up to `timeout`.
async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let backend = Backend::start("hello-00001");
    let mut weir = hello(&backend, "10s");

    let url = format!("{}/delay/2000", weir.http_url());
    let in_flight = tokio::spawn(async move { get(&url, HOST, &[]).await });
    assert!(
        eventually(Duration::from_secs(10), || backend.in_flight() == 1).await,
        "the request never reached the backend"
    );

    let signalled = Instant::now();
    weir.signal(Signal::SIGTERM);
    // Draining stops accepting: new connections are refused while the request finishes.
    let http = weir.http_addr();
    assert!(
        eventually(Duration::from_millis(1500), || TcpStream::connect(http)
            .is_err())
        .await,
        "the http listener still accepts connections {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(backend.in_flight(), 1, "the request is still in flight");
    let r = in_flight.await.expect("the request task");
    assert_eq!(r.status, 200, "the in-flight request was cut: {r:?}");
    assert_eq!(r.revision(), Some("hello-00001"));

    let left = Duration::from_secs(8).saturating_sub(signalled.elapsed());
    let status = weir.wait_exit(left);
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {:?} after SIGTERM (drain_timeout 10s, nothing in flight)",
            signalled.elapsed()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[tokio::test]
async fn sigterm_when_idle_exits_0_promptly() {
    let backend = Backend::start("hello-00001");
    let mut weir = hello(&backend, "10s");
    let r = get(&format!("{}/", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");

    weir.signal(Signal::SIGTERM);
    let status = weir
        .wait_exit(Duration::from_secs(8))
        .expect("still running 8 s after SIGTERM with nothing in flight");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[tokio::test]
async fn sigint_exits_at_once() {
    let backend = Backend::start("hello-00001");
    let mut weir = hello(&backend, "30s");

    // Even with a request in flight: SIGINT does not drain.
    let url = format!("{}/delay/20000", weir.http_url());
    let in_flight = tokio::spawn(async move {
        let client = weir_tests::new_client();
        client
            .get(url)
            .header("host", HOST)
            .send()
            .await
            .map(|r| r.status())
    });
    assert!(
        eventually(Duration::from_secs(10), || backend.in_flight() == 1).await,
        "the request never reached the backend"
    );

    let signalled = Instant::now();
    weir.signal(Signal::SIGINT);
    let status = weir
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("still running {:?} after SIGINT", signalled.elapsed()));
    eprintln!("exited {status} {:?} after SIGINT", signalled.elapsed());
    let r = in_flight.await.expect("the request task");
    assert!(r.is_err(), "the in-flight request was not cut: {r:?}");
}
