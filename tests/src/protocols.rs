//! Backends that speak more than HTTP/1.1, for the protocol tests and the Kourier-shaped
//! replay: an h2c server (hyper, HTTP/2 only, prior knowledge) that echoes plain requests as
//! JSON and serves the gRPC service `weir.test.Echo` with hand-framed messages and trailers
//! (unary, server-streaming and bidirectional calls); a WebSocket echo server
//! (tokio-tungstenite); and the clients that talk to them through a proxy (tonic's gRPC
//! client with hand-written message types: no protoc). Every backend answers Knative's
//! ingress probes like networking's probe handler (see [`crate::backend`]).

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
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint};

/// How long any single step may take.
const WAIT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1:0, on a thread and runtime of its own (so it serves whatever the
/// test is doing); `conn` serves each accepted connection. Stops on drop.
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start<F, Fut>(name: &str, conn: F) -> TestServer
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

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

pub type Body = BoxBody<Bytes, Infallible>;

/// A revision's pod speaking HTTP/2 only (h2c, prior knowledge). Plain requests get a JSON
/// echo (`revision`, `version`, `path`, `headers`); `application/grpc` requests go to the
/// gRPC service `weir.test.Echo`. Every answer carries `x-revision`.
pub struct H2Backend {
    server: TestServer,
    requests: Arc<AtomicU64>,
}

impl H2Backend {
    pub fn start(name: &str) -> H2Backend {
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

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn h2_handle(
    req: Request<Incoming>,
    name: Arc<str>,
    requests: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    if let Some(probe) = crate::backend::probe_answer(req.headers()) {
        let (status, hash) = probe;
        let mut resp = Response::builder().status(status);
        if let Some(h) = hash {
            resp = resp.header(crate::backend::HASH_HEADER, h);
        }
        return Ok(resp
            .body(Full::new(Bytes::new()).boxed())
            .expect("a valid response"));
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        if req.uri().path() == CHAT {
            return Ok(grpc_chat(req, &name));
        }
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

pub const UNARY: &str = "/weir.test.Echo/Unary";
pub const STREAM: &str = "/weir.test.Echo/Stream";
/// Bidirectional: each request message is answered at once (networking's PingStream).
pub const CHAT: &str = "/weir.test.Echo/Chat";

/// `weir.test.EchoRequest`: echo `message`; `Stream` sends `count` replies; a non-zero
/// `status` ends the call with that grpc-status and `message` as grpc-message (`Unary`
/// answers it trailers-only, `Stream` after its replies).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(int32, tag = "3")]
    pub status: i32,
}

/// `weir.test.EchoReply`: the message, which revision answered, the reply's index, and how
/// the request arrived (its `te` header and HTTP version).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub revision: String,
    #[prost(uint32, tag = "3")]
    pub index: u32,
    #[prost(string, tag = "4")]
    pub te: String,
    #[prost(string, tag = "5")]
    pub version: String,
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

/// A bidirectional call: every request message is answered with one reply as soon as it is
/// read, until the client ends its stream; then trailers with status 0.
fn grpc_chat(req: Request<Incoming>, name: &str) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let name_owned = name.to_owned();
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut index = 0;
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            // Every complete length-prefixed message in the buffer.
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let msg = buf.split_to(5 + len);
                let Ok(request) = EchoRequest::decode(&msg[5..]) else {
                    return;
                };
                let reply = EchoReply {
                    message: request.message,
                    revision: name_owned.clone(),
                    index,
                    te: String::new(),
                    version: version.clone(),
                };
                index += 1;
                if tx.send(Ok(Frame::data(grpc_frame(&reply)))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        grpc_status(&mut trailers, &name_owned, 0, "");
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    grpc_response(name, BodyExt::boxed(StreamBody::new(stream)))
}

/// `rounds` round trips on one bidirectional call: send a message, wait for its reply. The
/// revision that answered each reply.
pub async fn chat(
    client: &tonic::client::Grpc<Channel>,
    rounds: u32,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = client.clone();
    client.ready().await.expect("the channel is ready");
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let codec: ProstCodec<EchoRequest, EchoReply> = ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static(CHAT);
    tx.send(EchoRequest {
        message: "0".into(),
        ..Default::default()
    })
    .await
    .expect("the request stream is open");
    let resp = client
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            codec,
        )
        .await?;
    let mut replies = resp.into_inner();
    let mut revisions = Vec::new();
    for i in 0..rounds {
        let reply = tokio::time::timeout(WAIT, replies.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no reply in time"))??
            .ok_or_else(|| tonic::Status::internal("the call ended early"))?;
        assert_eq!(reply.message, i.to_string(), "replies in order");
        revisions.push(reply.revision);
        if i + 1 < rounds {
            tx.send(EchoRequest {
                message: (i + 1).to_string(),
                ..Default::default()
            })
            .await
            .map_err(|_| tonic::Status::internal("the request stream closed"))?;
        }
    }
    drop(tx);
    while replies.message().await?.is_some() {}
    Ok(revisions)
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

/// A tonic client over one HTTP/2 connection to a proxy's plain listener (h2c), with
/// `:authority` `host`.
pub async fn grpc_client(proxy: SocketAddr, host: &str) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{proxy}"))
        .expect("an endpoint")
        .origin(format!("http://{host}").parse().expect("an origin"))
        .connect_timeout(WAIT)
        .timeout(WAIT)
        .connect()
        .await
        .expect("connect to the proxy");
    tonic::client::Grpc::new(channel)
}

pub async fn unary(
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
pub async fn stream(
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

pub fn metadata(map: &tonic::metadata::MetadataMap, key: &str) -> String {
    map.get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// --- WebSocket ---

/// A WebSocket echo server for one revision: the handshake answer carries `x-revision` and
/// `x-knative-revision` (the `Knative-Serving-Revision` the upgrade request arrived with);
/// text and binary messages come back as they were sent. Plain requests get 200 (and
/// Knative's probes their answer), as from Knative's wsserver test image.
pub fn ws_backend(name: &str) -> TestServer {
    let name: Arc<str> = Arc::from(name);
    TestServer::start(&name.clone(), move |stream| {
        let name = name.clone();
        async move {
            let svc = service_fn(move |req| ws_handle(req, name.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        }
    })
}

async fn ws_handle(
    mut req: Request<Incoming>,
    name: Arc<str>,
) -> Result<Response<Body>, Infallible> {
    let empty = || Full::new(Bytes::new()).boxed();
    if let Some((status, hash)) = crate::backend::probe_answer(req.headers()) {
        let mut resp = Response::builder().status(status);
        if let Some(h) = hash {
            resp = resp.header(crate::backend::HASH_HEADER, h);
        }
        return Ok(resp.body(empty()).expect("a valid response"));
    }
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(key), true) = (key, upgrade) else {
        return Ok(Response::builder()
            .header("x-revision", &*name)
            .body(Full::new(Bytes::from_static(b"a WebSocket server\n")).boxed())
            .expect("a valid response"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let knative_revision = req.headers().get("knative-serving-revision").cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .header("x-revision", &*name);
    if let Some(v) = knative_revision {
        resp = resp.header("x-knative-revision", v);
    }
    Ok(resp.body(empty()).expect("a valid response"))
}

/// A WebSocket handshake with a proxy's plain listener for `ws://host/ws`: the socket
/// and the handshake answer's headers.
pub async fn ws_connect(
    proxy: SocketAddr,
    host: &str,
) -> (WebSocketStream<TcpStream>, http::HeaderMap) {
    let req = format!("ws://{host}/ws")
        .into_client_request()
        .expect("a WebSocket request");
    let tcp = TcpStream::connect(proxy)
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
pub async fn ws_echo(mut ws: WebSocketStream<TcpStream>, tag: &str) {
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

pub fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
