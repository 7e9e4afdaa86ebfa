//! Protocols that pass through (docs/behaviour.md#protocols; docs/knative.md#ingress-conformance-suite: basics/http2, grpc,
//! grpc/split, websocket, websocket/split): HTTP/2 to `protocol: h2c` revisions from h2c,
//! h2-over-TLS and HTTP/1.1 clients; gRPC unary and server-streaming calls (status and
//! trailers intact) through a split; WebSocket echo, through a split and from zero.
//!
//! The backends are the harness's (`weir_tests::protocols`): an h2c server that echoes
//! plain requests and answers gRPC with hand-framed messages and trailers, and a WebSocket
//! echo server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::codec::ProstCodec;
use weir_tests::protocols::{
    grpc_client, header, metadata, stream, unary, ws_backend, ws_connect, ws_echo, EchoReply,
    EchoRequest, H2Backend,
};
use weir_tests::tls::{alpn, tls_connect, HttpConn, TestCa};
use weir_tests::{get, start_weir, weir_bin, Weir};

const NS: &str = "default";
/// How long any single step may take.
const WAIT: Duration = Duration::from_secs(10);

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_revision_sees_http2_from_every_client() {
    const HOST: &str = "h2.default.example.com";
    let backend = H2Backend::start("h2-00001");
    let ca = TestCa::generate();
    let cert = ca.issue(&[HOST]);
    let cfg = json!({
        "services": [{"name": "h2", "traffic": [{"revision": "h2-00001", "percent": 100}]}],
        "revisions": [{"name": "h2-00001", "protocol": "h2c", "endpoints": [backend.endpoint()]}],
        "tls": [{"hosts": [HOST], "cert": "h2.pem", "key": "h2.key"}],
    });
    let weir = Weir::builder(weir_bin!(), &cfg)
        .https()
        .file("h2.pem", cert.cert_pem)
        .file("h2.key", cert.key_pem)
        .start();

    let check = |r: &weir_tests::Response, proto: &str, client: &str| {
        assert_eq!(r.status, 200, "{client}: {r:?}");
        assert_eq!(r.revision(), Some("h2-00001"), "{client}: {r:?}");
        assert_eq!(r.json()["version"], "HTTP/2.0", "{client}: upstream {r:?}");
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some(proto),
            "{client}"
        );
    };

    // h2c with prior knowledge on the plain listener, two requests on one connection.
    let tcp = TcpStream::connect(weir.http_addr()).await.expect("connect");
    let mut h2c = HttpConn::http2(tcp, "http").await;
    for i in 0..2 {
        let (r, version) = h2c.get(HOST, &format!("/h2c/{i}")).await.expect("GET h2c");
        assert_eq!(version, http::Version::HTTP_2);
        check(&r, "http", "h2c");
        assert_eq!(r.json()["path"], format!("/h2c/{i}"));
    }

    // h2 over TLS (ALPN).
    let tls = tls_connect(
        weir.https_addr(),
        HOST,
        ca.client_config(&["h2", "http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    let mut h2 = HttpConn::http2(tls, "https").await;
    let (r, version) = h2.get(HOST, "/h2").await.expect("GET h2");
    assert_eq!(version, http::Version::HTTP_2);
    check(&r, "https", "h2 over TLS");

    // HTTP/1.1 clients, plain and TLS: the revision still gets HTTP/2.
    let r = get(&format!("{}/h1", weir.http_url()), HOST, &[]).await;
    check(&r, "http", "HTTP/1.1");
    let tls = tls_connect(weir.https_addr(), HOST, ca.client_config(&["http/1.1"]))
        .await
        .expect("TLS handshake");
    let (r, version) = HttpConn::http1(tls)
        .await
        .get(HOST, "/h1-tls")
        .await
        .expect("GET http/1.1 over TLS");
    assert_eq!(version, http::Version::HTTP_11);
    check(&r, "https", "HTTP/1.1 over TLS");
    assert_eq!(backend.requests(), 5);
}

const GRPC_HOST: &str = "grpc.default.example.com";

/// Service `grpc` split 50/50 over two h2c gRPC revisions.
fn grpc_split() -> (H2Backend, H2Backend, Weir) {
    let (a, b) = (
        H2Backend::start("grpc-00001"),
        H2Backend::start("grpc-00002"),
    );
    let weir = start_weir!(json!({
        "services": [{"name": "grpc", "traffic": [
            {"revision": "grpc-00001", "percent": 50},
            {"revision": "grpc-00002", "percent": 50},
        ]}],
        "revisions": [
            {"name": "grpc-00001", "protocol": "h2c", "endpoints": [a.endpoint()]},
            {"name": "grpc-00002", "protocol": "h2c", "endpoints": [b.endpoint()]},
        ],
    }));
    (a, b, weir)
}

const MAX_CALLS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_through_a_split() {
    let (a, b, weir) = grpc_split();
    let client = grpc_client(weir.http_addr(), GRPC_HOST).await;

    // Unary calls until both revisions answered.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..MAX_CALLS {
        let msg = format!("unary {i}");
        let req = EchoRequest {
            message: msg.clone(),
            ..Default::default()
        };
        let resp = unary(&client, req)
            .await
            .unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        let header_rev = metadata(resp.metadata(), "x-revision");
        // tonic merges the trailers into the metadata of a unary answer.
        let trailer_rev = metadata(resp.metadata(), "x-trailer-revision");
        let reply = resp.into_inner();
        assert_eq!(reply.message, msg);
        assert_eq!(reply.index, 0);
        assert_eq!(
            reply.version, "HTTP/2.0",
            "the revision got {}",
            reply.version
        );
        assert_eq!(reply.te, "trailers", "TE as the revision got it");
        assert_eq!(header_rev, reply.revision);
        assert_eq!(trailer_rev, reply.revision, "the trailers of call {i}");
        *seen.entry(reply.revision).or_default() += 1;
        if seen.len() == 2 {
            break;
        }
    }
    eprintln!("unary calls per revision: {seen:?}");
    assert_eq!(
        seen.len(),
        2,
        "one revision only in {MAX_CALLS} calls: {seen:?}"
    );

    // Server-streaming calls until both revisions answered.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..MAX_CALLS {
        let msg = format!("stream {i}");
        let req = EchoRequest {
            message: msg.clone(),
            count: 3,
            status: 0,
        };
        let (header_rev, replies, end) = stream(&client, req).await;
        let trailers = end.unwrap_or_else(|s| panic!("stream {i} ended with {s:?}"));
        assert_eq!(replies.len(), 3, "stream {i}: {replies:?}");
        for (n, r) in replies.iter().enumerate() {
            assert_eq!(r.index as usize, n);
            assert_eq!(r.message, msg);
            assert_eq!(r.revision, header_rev);
            assert_eq!(r.version, "HTTP/2.0");
        }
        assert_eq!(metadata(&trailers, "x-trailer-revision"), header_rev);
        *seen.entry(header_rev).or_default() += 1;
        if seen.len() == 2 {
            break;
        }
    }
    eprintln!("streaming calls per revision: {seen:?}");
    assert_eq!(
        seen.len(),
        2,
        "one revision only in {MAX_CALLS} calls: {seen:?}"
    );
    assert!(a.requests() > 0 && b.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_status_and_trailers_pass_through() {
    let (_a, _b, weir) = grpc_split();
    let client = grpc_client(weir.http_addr(), GRPC_HOST).await;

    // Trailers-only: the status comes in the response headers, which end the stream.
    let status = unary(
        &client,
        EchoRequest {
            message: "no such thing".into(),
            count: 0,
            status: tonic::Code::NotFound as i32,
        },
    )
    .await
    .expect_err("a NOT_FOUND call succeeded");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing");
    let rev = metadata(status.metadata(), "x-trailer-revision");
    assert!(rev.starts_with("grpc-0000"), "{status:?}");

    // After two replies, trailers with a non-OK status.
    let (header_rev, replies, end) = stream(
        &client,
        EchoRequest {
            message: "out of luck".into(),
            count: 2,
            status: tonic::Code::FailedPrecondition as i32,
        },
    )
    .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    let status = end.expect_err("the stream ended OK");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "out of luck");
    assert_eq!(
        metadata(status.metadata(), "x-trailer-revision"),
        header_rev
    );

    // An unknown method: UNIMPLEMENTED from the revision, not from the proxy.
    let mut c = client.clone();
    c.ready().await.expect("ready");
    let codec: ProstCodec<EchoRequest, EchoReply> = ProstCodec::default();
    let status = c
        .unary(
            tonic::Request::new(EchoRequest::default()),
            http::uri::PathAndQuery::from_static("/weir.test.Echo/Nope"),
            codec,
        )
        .await
        .expect_err("an unknown method succeeded");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(metadata(status.metadata(), "x-trailer-revision").starts_with("grpc-0000"));

    // The connection is still good.
    let ok = unary(
        &client,
        EchoRequest {
            message: "fine".into(),
            ..Default::default()
        },
    )
    .await
    .expect("an OK call after the errors");
    assert_eq!(ok.into_inner().message, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    const HOST: &str = "ws.default.example.com";
    let backend = ws_backend("ws-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "ws", "traffic": [{"revision": "ws-00001", "percent": 100}]}],
        "revisions": [{"name": "ws-00001", "endpoints": [backend.endpoint()]}],
    }));
    let (ws, headers) = ws_connect(weir.http_addr(), HOST).await;
    assert_eq!(header(&headers, "x-revision"), "ws-00001");
    assert_eq!(header(&headers, "x-knative-revision"), "ws-00001");
    ws_echo(ws, "one").await;
    // Two at once.
    let ((ws1, _), (ws2, _)) = tokio::join!(
        ws_connect(weir.http_addr(), HOST),
        ws_connect(weir.http_addr(), HOST)
    );
    tokio::join!(ws_echo(ws1, "two"), ws_echo(ws2, "three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_a_split() {
    const HOST: &str = "wsplit.default.example.com";
    const CONNECTIONS: usize = 40;
    let (a, b) = (ws_backend("wsplit-00001"), ws_backend("wsplit-00002"));
    let weir = start_weir!(json!({
        "services": [{"name": "wsplit", "traffic": [
            {"revision": "wsplit-00001", "percent": 50},
            {"revision": "wsplit-00002", "percent": 50},
        ]}],
        "revisions": [
            {"name": "wsplit-00001", "endpoints": [a.endpoint()]},
            {"name": "wsplit-00002", "endpoints": [b.endpoint()]},
        ],
    }));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..CONNECTIONS {
        let (ws, headers) = ws_connect(weir.http_addr(), HOST).await;
        let rev = header(&headers, "x-revision");
        assert_eq!(header(&headers, "x-knative-revision"), rev);
        ws_echo(ws, &format!("{i}")).await;
        *seen.entry(rev).or_default() += 1;
    }
    eprintln!("WebSocket connections per revision: {seen:?}");
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["wsplit-00001", "wsplit-00002"],
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_a_revision_at_zero_is_held_until_it_has_an_endpoint() {
    const HOST: &str = "wszero.default.example.com";
    const REV: &str = "wszero-00001";
    let backend = ws_backend(REV);
    let weir = start_weir!(json!({
        "services": [{"name": "wszero", "traffic": [{"revision": REV, "percent": 100}]}],
        "revisions": [{"name": REV, "endpoints": []}],
    }));
    // The handshake runs beside the test: it can complete only once the revision has an
    // endpoint.
    let (ws_tx, upgrade) = oneshot::channel();
    let addr = weir.http_addr();
    tokio::spawn(async move {
        let req = format!("ws://{HOST}/ws")
            .into_client_request()
            .expect("a WebSocket request");
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let _ = ws_tx.send(tokio_tungstenite::client_async(req, tcp).await);
    });
    weir.wait_held(NS, REV, 1, WAIT).await;

    weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;
    let (ws, resp) = tokio::time::timeout(WAIT, upgrade)
        .await
        .expect("the held upgrade did not complete")
        .expect("the handshake task")
        .expect("the WebSocket handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(header(resp.headers(), "x-revision"), REV);
    ws_echo(ws, "from zero").await;
    weir.wait_held(NS, REV, 0, WAIT).await;
}
