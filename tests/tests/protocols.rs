//! Protocols that pass through (CONTRACT.md §3; KNATIVE.md conformance: basics/http2, grpc,
//! grpc/split, websocket, websocket/split): HTTP/2 to `protocol: h2c` revisions from h2c,
//! h2-over-TLS and HTTP/1.1 clients; gRPC unary and server-streaming calls (status and
//! trailers intact) through a split; WebSocket echo, through a split and from zero.
//!
//! The backends here are the test's own: an h2c server (hyper, HTTP/2 only, prior
//! knowledge) that echoes plain requests as JSON and answers gRPC with hand-framed
//! messages and trailers, and a WebSocket echo server (tokio-tungstenite). The gRPC client
//! is tonic's, with message types written by hand (no protoc).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint};
use weir_tests::tls::{alpn, tls_connect, HttpConn, TestCa};
use weir_tests::{get, start_weir, weir_bin, Weir};

const NS: &str = "default";
/// How long any single step may take.
const WAIT: Duration = Duration::from_secs(10);

// === test servers ===

/// A server on 127.0.0.1:0, on a thread and runtime of its own (so it serves whatever the
/// test is doing); `conn` serves each accepted connection. Stops on drop.
struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start<F, Fut>(name: &str, conn: F) -> TestServer
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a server");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, mut rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("server-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(conn(stream));
                            },
                        }
                    }
                });
            })
            .expect("spawn a server thread");
        TestServer {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// A revision's pod speaking HTTP/2 only (h2c, prior knowledge). Plain requests get a JSON
/// echo (`revision`, `version`, `path`, `headers`); `application/grpc` requests go to the
/// gRPC service `weir.test.Echo`. Every answer carries `x-revision`.
struct H2Backend {
    server: TestServer,
    requests: Arc<AtomicU64>,
}

impl H2Backend {
    fn start(name: &str) -> H2Backend {
        let requests = Arc::new(AtomicU64::new(0));
        let name: Arc<str> = Arc::from(name);
        let counter = requests.clone();
        let server = TestServer::start(&name.clone(), move |stream| {
            let (name, counter) = (name.clone(), counter.clone());
            async move {
                let svc = service_fn(move |req| h2_handle(req, name.clone(), counter.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        H2Backend { server, requests }
    }

    fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn h2_handle(
    req: Request<Incoming>,
    name: Arc<str>,
    requests: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Ok(grpc_handle(req, &name).await);
    }
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers.insert(k.as_str().to_owned(), Value::String(v));
    }
    let echo = json!({
        "revision": &*name,
        "version": format!("{:?}", req.version()),
        "path": req.uri().path(),
        "headers": headers,
    });
    Ok(Response::builder()
        .header("x-revision", &*name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo.to_string())).boxed())
        .expect("a valid response"))
}

// --- gRPC, framed by hand ---

const UNARY: &str = "/weir.test.Echo/Unary";
const STREAM: &str = "/weir.test.Echo/Stream";

/// `weir.test.EchoRequest`: echo `message`; `Stream` sends `count` replies; a non-zero
/// `status` ends the call with that grpc-status and `message` as grpc-message (`Unary`
/// answers it trailers-only, `Stream` after its replies).
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(int32, tag = "3")]
    status: i32,
}

/// `weir.test.EchoReply`: the message, which revision answered, the reply's index, and how
/// the request arrived (its `te` header and HTTP version).
#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    revision: String,
    #[prost(uint32, tag = "3")]
    index: u32,
    #[prost(string, tag = "4")]
    te: String,
    #[prost(string, tag = "5")]
    version: String,
}

/// One length-prefixed gRPC message (not compressed).
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a small message"));
    msg.encode(&mut buf).expect("encode a message");
    buf.freeze()
}

/// The single message of a unary or server-streaming request body.
fn grpc_request(body: &[u8]) -> Option<EchoRequest> {
    let (&[flag, a, b, c, d], rest) = body.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if flag != 0 || rest.len() != len {
        return None;
    }
    EchoRequest::decode(rest).ok()
}

async fn grpc_handle(req: Request<Incoming>, name: &str) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let te = parts
        .headers
        .get(http::header::TE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let version = format!("{:?}", parts.version);
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Some(request) = grpc_request(&body) else {
        return grpc_trailers_only(name, 3, "bad request message");
    };
    let reply = |index| EchoReply {
        message: request.message.clone(),
        revision: name.to_owned(),
        index,
        te: te.clone(),
        version: version.clone(),
    };
    match parts.uri.path() {
        UNARY if request.status != 0 => grpc_trailers_only(name, request.status, &request.message),
        UNARY => grpc_replies(name, vec![reply(0)], 0, ""),
        STREAM => grpc_replies(
            name,
            (0..request.count).map(reply).collect(),
            request.status,
            &request.message,
        ),
        _ => grpc_trailers_only(name, 12, "no such method"),
    }
}

/// The status headers of a call's end (trailers, or headers of a trailers-only answer).
fn grpc_status(map: &mut HeaderMap, name: &str, status: i32, message: &str) {
    map.insert("grpc-status", HeaderValue::from(status));
    if status != 0 {
        map.insert(
            "grpc-message",
            HeaderValue::from_str(message).expect("a plain grpc-message"),
        );
    }
    map.insert(
        "x-trailer-revision",
        HeaderValue::from_str(name).expect("a header value"),
    );
}

fn grpc_response(name: &str, body: Body) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("x-revision", name)
        .body(body)
        .expect("a valid response")
}

/// Each reply in its own DATA frame, then trailers with `status`.
fn grpc_replies(name: &str, replies: Vec<EchoReply>, status: i32, message: &str) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    grpc_status(&mut trailers, name, status, message);
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = replies
        .iter()
        .map(|r| Ok(Frame::data(grpc_frame(r))))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))))
        .collect();
    grpc_response(
        name,
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))),
    )
}

/// No message: the status in the response headers, which end the stream.
fn grpc_trailers_only(name: &str, status: i32, message: &str) -> Response<Body> {
    let mut resp = grpc_response(name, Full::new(Bytes::new()).boxed());
    grpc_status(resp.headers_mut(), name, status, message);
    resp
}

/// A tonic client over one HTTP/2 connection to the proxy's plain listener (h2c), with
/// `:authority` `host`.
async fn grpc_client(weir: &Weir, host: &str) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(weir.http_url())
        .expect("an endpoint")
        .origin(format!("http://{host}").parse().expect("an origin"))
        .connect_timeout(WAIT)
        .timeout(WAIT)
        .connect()
        .await
        .expect("connect to the proxy");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    client: &tonic::client::Grpc<Channel>,
    request: EchoRequest,
) -> Result<tonic::Response<EchoReply>, tonic::Status> {
    let mut client = client.clone();
    client.ready().await.expect("the channel is ready");
    let codec: ProstCodec<EchoRequest, EchoReply> = ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static(UNARY);
    client
        .unary(tonic::Request::new(request), path, codec)
        .await
}

/// A server-streaming call read to its end: the `x-revision` response header, the replies,
/// and how it ended (the trailers, or the status).
async fn stream(
    client: &tonic::client::Grpc<Channel>,
    request: EchoRequest,
) -> (
    String,
    Vec<EchoReply>,
    Result<tonic::metadata::MetadataMap, tonic::Status>,
) {
    let mut client = client.clone();
    client.ready().await.expect("the channel is ready");
    let codec: ProstCodec<EchoRequest, EchoReply> = ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static(STREAM);
    let resp = client
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .expect("the stream's headers");
    let revision = metadata(resp.metadata(), "x-revision");
    let mut replies = resp.into_inner();
    let mut got = Vec::new();
    loop {
        match replies.message().await {
            Ok(Some(r)) => got.push(r),
            Ok(None) => break,
            Err(status) => return (revision, got, Err(status)),
        }
    }
    let trailers = replies.trailers().await.map(|t| t.unwrap_or_default());
    (revision, got, trailers)
}

fn metadata(map: &tonic::metadata::MetadataMap, key: &str) -> String {
    map.get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// --- WebSocket ---

/// A WebSocket echo server for one revision: the handshake answer carries `x-revision` and
/// `x-knative-revision` (the `Knative-Serving-Revision` the upgrade request arrived with);
/// text and binary messages come back as they were sent.
fn ws_backend(name: &str) -> TestServer {
    let name: Arc<str> = Arc::from(name);
    TestServer::start(&name.clone(), move |stream| {
        let name = name.clone();
        async move {
            // The signature is tungstenite's `Callback`.
            #[allow(clippy::result_large_err)]
            let callback = move |req: &WsRequest, mut resp: WsResponse| {
                let h = resp.headers_mut();
                h.insert("x-revision", HeaderValue::from_str(&name).expect("a name"));
                if let Some(v) = req.headers().get("knative-serving-revision") {
                    h.insert("x-knative-revision", v.clone());
                }
                Ok::<_, ErrorResponse>(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// A WebSocket handshake with the proxy's plain listener for `ws://host/path`: the socket
/// and the handshake answer's headers.
async fn ws_connect(weir: &Weir, host: &str) -> (WebSocketStream<TcpStream>, http::HeaderMap) {
    let req = format!("ws://{host}/ws")
        .into_client_request()
        .expect("a WebSocket request");
    let tcp = TcpStream::connect(weir.http_addr())
        .await
        .expect("connect to the proxy");
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("the WebSocket handshake timed out")
        .expect("the WebSocket handshake");
    assert_eq!(resp.status(), 101);
    (ws, resp.headers().clone())
}

/// Sends a text and a binary message and expects each back; then closes.
async fn ws_echo(mut ws: WebSocketStream<TcpStream>, tag: &str) {
    for msg in [
        Message::Text(format!("hello {tag}")),
        Message::Binary(tag.as_bytes().to_vec()),
    ] {
        ws.send(msg.clone()).await.expect("send a message");
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no echo in time");
        match back {
            Some(Ok(back)) => assert_eq!(back, msg),
            // pingora 0.9's HTTP/1 upgrade race (cloudflare/pingora#946): when the upstream's
            // 101 is read before the upgrade request's empty body end, the tunnel is torn
            // down right after the handshake.
            other => panic!(
                "connection {tag:?}: no echo of {msg:?}, got {other:?}: the tunnel closed after \
                 the 101 (cloudflare/pingora#946 if the proxy's debug log shows \
                 `try_reserve() body pipe for upstream: Closed`)"
            ),
        }
    }
    ws.close(None).await.expect("close");
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

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
    let client = grpc_client(&weir, GRPC_HOST).await;

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
    let client = grpc_client(&weir, GRPC_HOST).await;

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
    let (ws, headers) = ws_connect(&weir, HOST).await;
    assert_eq!(header(&headers, "x-revision"), "ws-00001");
    assert_eq!(header(&headers, "x-knative-revision"), "ws-00001");
    ws_echo(ws, "one").await;
    // Two at once.
    let ((ws1, _), (ws2, _)) = tokio::join!(ws_connect(&weir, HOST), ws_connect(&weir, HOST));
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
        let (ws, headers) = ws_connect(&weir, HOST).await;
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
