//! Backend failures: no retry of an answered request, no ingress timeout, connect retry on
//! another endpoint, 502 when every endpoint refuses (docs/behaviour.md#failures-and-status-codes).

use std::time::{Duration, Instant};

use serde_json::json;
use weir_tests::{dead_endpoint, get, new_client, send, start_weir, Backend, Weir};

const HOST: &str = "hello.default.example.com";

fn hello(endpoints: &[String]) -> Weir {
    start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": endpoints}],
    }))
}

#[tokio::test]
async fn backend_503_reaches_the_client_without_retry() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&[backend.endpoint()]);

    let r = get(&format!("{}/status/503", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.revision(),
        Some("hello-00001"),
        "the backend's own answer: {r:?}"
    );
    assert_eq!(
        backend.requests(),
        1,
        "the backend saw the request more than once"
    );

    let r = get(&format!("{}/status/500", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn slow_backend_is_not_timed_out() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&[backend.endpoint()]);

    let start = Instant::now();
    let r = get(&format!("{}/delay/5000", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 200, "after {:?}: {r:?}", start.elapsed());
    assert_eq!(r.revision(), Some("hello-00001"), "{r:?}");
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint() {
    let live = Backend::start("hello-00001");
    let weir = hello(&[dead_endpoint(), live.endpoint()]);

    let client = new_client();
    for i in 0..50 {
        let r = send(&client, &format!("{}/n/{i}", weir.http_url()), HOST, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.revision(), Some("hello-00001"));
    }
    // Fresh client connections too (nothing may hinge on the client's keep-alive).
    for i in 0..10 {
        let r = get(&format!("{}/fresh/{i}", weir.http_url()), HOST, &[]).await;
        assert_eq!(r.status, 200, "fresh request {i}: {r:?}");
    }
    assert_eq!(live.requests(), 60);
}

#[tokio::test]
async fn all_endpoints_refusing_is_502() {
    let weir = hello(&[dead_endpoint(), dead_endpoint()]);

    for _ in 0..3 {
        let r = get(&format!("{}/", weir.http_url()), HOST, &[]).await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(
            r.body,
            "upstream connect error for revision default/hello-00001\n"
        );
    }
}
