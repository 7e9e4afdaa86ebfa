//! What the upstream request carries (docs/behaviour.md#upstream-request-headers).

use serde_json::json;
use weir_tests::{get, raw_request, start_weir, Backend, Weir};

const HOST: &str = "hello.default.example.com";

fn hello(backend: &Backend) -> Weir {
    start_weir!(json!({
        "services": [{"name": "hello", "traffic": [
            {"revision": "hello-00001", "percent": 100},
        ]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }))
}

#[tokio::test]
async fn knative_headers_overwrite_client_values() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&backend);
    let url = format!("{}/", weir.http_url());

    let r = get(&url, HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("knative-serving-revision").as_deref(),
        Some("hello-00001")
    );
    assert_eq!(
        r.upstream_header("knative-serving-namespace").as_deref(),
        Some("default")
    );

    let r = get(
        &url,
        HOST,
        &[
            ("Knative-Serving-Revision", "evil-00001"),
            ("Knative-Serving-Namespace", "evil"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("knative-serving-revision").as_deref(),
        Some("hello-00001")
    );
    assert_eq!(
        r.upstream_header("knative-serving-namespace").as_deref(),
        Some("default")
    );
}

#[tokio::test]
async fn forwarded_headers() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&backend);
    let url = format!("{}/", weir.http_url());

    let r = get(&url, HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );

    // Appended to what the client sent.
    let r = get(&url, HOST, &[("X-Forwarded-For", "10.1.2.3")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let xff = r.upstream_header("x-forwarded-for").unwrap_or_default();
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(hops, ["10.1.2.3", "127.0.0.1"], "X-Forwarded-For: {xff:?}");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_host_is_kept() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&backend);

    let r = raw_request(
        weir.http_addr(),
        &format!(
            "GET /hop HTTP/1.1\r\n\
             Host: {HOST}\r\n\
             Connection: x-foo\r\n\
             x-foo: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\n\
             TE: trailers\r\n\
             x-end-to-end: 2\r\n\
             \r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.upstream_headers();
    for dropped in ["x-foo", "keep-alive", "proxy-connection"] {
        assert!(
            !seen.contains_key(dropped),
            "{dropped} reached the backend: {seen:?}"
        );
    }
    if let Some(conn) = seen.get("connection").and_then(|v| v.as_str()) {
        assert!(
            !conn.to_ascii_lowercase().contains("x-foo"),
            "the client's Connection header reached the backend: {conn:?}"
        );
    }
    assert_eq!(r.upstream_header("x-end-to-end").as_deref(), Some("2"));
    assert_eq!(r.upstream_header("host").as_deref(), Some(HOST));
    assert_eq!(r.json()["path"], "/hop");
}

#[tokio::test]
async fn host_with_port_is_passed_as_sent() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&backend);
    let url = format!("{}/", weir.http_url());

    let r = get(&url, "hello.default.example.com:8080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("hello.default.example.com:8080")
    );
}

/// `K-Proxy-Request: activator` makes queue-proxy and the autoscaler treat a request as
/// already counted by an activator: a client on the public listener must not be able to
/// claim it, and Weir, when it reports to the autoscaler itself, claims it for every
/// request it sends.
#[tokio::test]
async fn k_proxy_request_is_stripped_from_clients_and_set_when_reporting() {
    let backend = Backend::start("hello-00001");
    let weir = hello(&backend);
    let claim = [("K-Proxy-Request", "activator")];
    let r = get(&format!("{}/", weir.http_url()), HOST, &claim).await;
    assert_eq!(
        r.upstream_header("k-proxy-request"),
        None,
        "public listener"
    );
    let r = get(&format!("{}/", weir.internal_url()), HOST, &claim).await;
    assert_eq!(
        r.upstream_header("k-proxy-request").as_deref(),
        Some("activator"),
        "from inside the cluster it passes"
    );

    // Reporting to an autoscaler (here one that is not there: the reports are dropped).
    let dead = format!("ws://127.0.0.1:{}", weir_tests::dead_port());
    let reporting = Weir::builder(
        weir_tests::weir_bin!(),
        &json!({
            "services": [{"name": "hello", "traffic": [
                {"revision": "hello-00001", "percent": 100},
            ]}],
            "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
        }),
    )
    .arg("--autoscaler")
    .arg(dead)
    .start();
    let r = get(&format!("{}/", reporting.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("k-proxy-request").as_deref(),
        Some("activator")
    );
}

/// The upstream request as bytes on the wire: the client's header fields in their order and
/// letter case (repeated ones too), then Weir's, in the case it writes them. A backend that
/// reads raw bytes, since an HTTP library would lowercase the names.
#[tokio::test]
async fn header_case_and_order_reach_the_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [addr.to_string()]}],
    }));
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed before a whole head");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    let r = raw_request(
        weir.http_addr(),
        &format!(
            "GET /x HTTP/1.1\r\nHost: {HOST}\r\nX-MiXeD-Case: 1\r\nx-dup: a\r\nAccept: */*\r\n\
             X-Dup: b\r\nUser-Agent: raw\r\nX-Last-One: z\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = backend.await.unwrap();
    let lines: Vec<&str> = head.trim_end().split("\r\n").skip(1).collect();
    let position = |name: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} not sent upstream as is:\n{head}"))
    };
    // The client's fields keep their case and relative order; both values of x-dup go, in
    // order, each in its own case, at the place of the first.
    let order = [
        position("X-MiXeD-Case"),
        position("x-dup"),
        position("Accept"),
        position("User-Agent"),
        position("X-Last-One"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{head}");
    let dups: Vec<&str> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-dup:"))
        .copied()
        .collect();
    assert_eq!(dups, ["x-dup: a", "X-Dup: b"], "{head}");
    // Weir's own, in their wire case.
    for line in [
        "Knative-Serving-Revision: hello-00001",
        "Knative-Serving-Namespace: default",
        "X-Forwarded-Proto: http",
    ] {
        assert!(lines.contains(&line), "{line} not in:\n{head}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("X-Forwarded-For: 127.0.0.1")),
        "{head}"
    );
}
