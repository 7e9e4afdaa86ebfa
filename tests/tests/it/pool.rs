//! Upstream keep-alive (docs/behaviour.md#upstream-connections): connections to an endpoint
//! are reused, and an idle one its server closed or wrote to is closed by Weir, never
//! reused, and never read as the next request's answer. Backends here are raw sockets, so
//! that each test sees exactly which connection a request came on and when Weir closed it.

use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use weir_tests::{new_client, start_weir, Weir};

const HOST: &str = "hello.default.example.com";

/// What a backend connection does after answering its first request.
#[derive(Clone, Copy)]
enum Then {
    /// Answer every further request on the connection.
    KeepServing,
    /// Close its side (FIN) and wait for the proxy to close too.
    Close,
    /// Write an answer nobody asked for and wait for the proxy to close.
    WriteStray,
}

struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// How long after the backend's close or stray write the proxy closed the connection.
    proxy_closed: mpsc::UnboundedReceiver<Duration>,
    /// Tells the first connection to close or write, once its answer has reached the client
    /// (by then the proxy has the connection idle in its pool, not on the way there).
    go: Arc<Notify>,
}

impl RawBackend {
    /// A backend whose first connection does `first` and later ones keep serving; each
    /// answer's body is `conn-N` (N counts connections from 1).
    async fn start(first: Then) -> RawBackend {
        RawBackend::start_with(first, plain).await
    }

    /// The same with each answer written by `answer` from its body.
    async fn start_with(first: Then, answer: Answer) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, proxy_closed) = mpsc::unbounded_channel();
        let go = Arc::new(Notify::new());
        let (count, go2) = (accepted.clone(), go.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let then = if n == 1 { first } else { Then::KeepServing };
                tokio::spawn(serve(s, n, then, answer, tx.clone(), go2.clone()));
            }
        });
        RawBackend {
            addr,
            accepted,
            proxy_closed,
            go,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Writes a whole answer around its body.
type Answer = fn(&str) -> String;

/// An HTTP/1.1 answer with a Content-Length.
fn plain(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Read one request head; false when the connection ended first.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

async fn serve(
    mut s: TcpStream,
    n: usize,
    then: Then,
    answer: Answer,
    closed: mpsc::UnboundedSender<Duration>,
    go: Arc<Notify>,
) {
    let answer = answer(&format!("conn-{n}"));
    loop {
        if !read_head(&mut s).await {
            return;
        }
        s.write_all(answer.as_bytes()).await.unwrap();
        if matches!(then, Then::KeepServing) {
            continue;
        }
        go.notified().await;
        match then {
            Then::KeepServing => unreachable!(),
            Then::Close => s.shutdown().await.unwrap(),
            Then::WriteStray => s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
                .await
                .unwrap(),
        }
        // Wait (bounded) for the proxy to close its side: a read of 0 bytes, or a reset when
        // it closed with the stray bytes unread.
        let since = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            let _ = closed.send(since.elapsed());
        }
        return;
    }
}

fn weir_for(backend: &RawBackend) -> Weir {
    start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.addr.to_string()]}],
    }))
}

async fn body_of(client: &reqwest::Client, weir: &Weir) -> String {
    let r = client
        .get(format!("{}/", weir.http_url()))
        .header("Host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn requests_reuse_one_upstream_connection() {
    let backend = RawBackend::start(Then::KeepServing).await;
    let weir = weir_for(&backend);
    let client = new_client();
    for _ in 0..50 {
        assert_eq!(body_of(&client, &weir).await, "conn-1");
    }
    // Fresh client connections too: the upstream connection outlives them.
    for _ in 0..5 {
        assert_eq!(body_of(&new_client(), &weir).await, "conn-1");
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn an_idle_connection_its_server_closed_is_closed_and_replaced() {
    let mut backend = RawBackend::start(Then::Close).await;
    let weir = weir_for(&backend);
    let client = new_client();
    assert_eq!(body_of(&client, &weir).await, "conn-1");
    backend.go.notify_one();
    // Nothing is sent: Weir notices the close on its idle connection by itself (its sweep
    // runs every second) and closes its side.
    let after = tokio::time::timeout(Duration::from_secs(5), backend.proxy_closed.recv())
        .await
        .expect("Weir did not close an idle connection its server had closed within 5 s")
        .unwrap();
    assert!(after < Duration::from_secs(5), "{after:?}");
    assert_eq!(body_of(&client, &weir).await, "conn-2");
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn bytes_on_an_idle_connection_close_it_and_are_never_an_answer() {
    let mut backend = RawBackend::start(Then::WriteStray).await;
    let weir = weir_for(&backend);
    let client = new_client();
    assert_eq!(body_of(&client, &weir).await, "conn-1");
    backend.go.notify_one();
    tokio::time::timeout(Duration::from_secs(5), backend.proxy_closed.recv())
        .await
        .expect("Weir did not close an idle connection with unexpected data within 5 s")
        .unwrap();
    // The next request goes on a new connection and gets that connection's answer.
    assert_eq!(body_of(&client, &weir).await, "conn-2");
    assert_eq!(backend.accepted(), 2);
}

/// Whether Weir reuses a connection after an answer follows what the answer's head says
/// (its version, `Connection`, framing), not whether the server happens to close: these
/// backends keep every connection open and answer every request on it.
#[tokio::test]
async fn reuse_follows_the_answer_head() {
    let cases: [(&str, Answer, usize); 5] = [
        ("HTTP/1.1", plain, 1),
        (
            "HTTP/1.1, Connection: close",
            |b| {
                format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            },
            3,
        ),
        (
            "HTTP/1.0",
            |b| format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
            3,
        ),
        (
            "HTTP/1.0, Connection: keep-alive, Keep-Alive: timeout=30",
            |b| {
                format!(
                    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=30\r\n\
                     Content-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            },
            1,
        ),
        (
            "HTTP/1.1, chunked",
            |b| {
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    b.len()
                )
            },
            1,
        ),
    ];
    for (what, answer, connections) in cases {
        let backend = RawBackend::start_with(Then::KeepServing, answer).await;
        let weir = weir_for(&backend);
        let client = new_client();
        for i in 1..=3 {
            let body = body_of(&client, &weir).await;
            let expected = if connections == 1 { 1 } else { i };
            assert_eq!(body, format!("conn-{expected}"), "{what}: request {i}");
        }
        assert_eq!(backend.accepted(), connections, "{what}");
    }
}

/// An HTTP/1.0 answer with `Transfer-Encoding` ends its connection whatever its `Connection`
/// says (RFC 9112 section 6.1): Weir reads the framing fields of the answer's head after
/// handing the head on, and must still see this one. Its body is written to the client
/// chunked like any other, so the answer's status line says HTTP/1.1 (an HTTP/1.0 head with a
/// chunked body is faulty framing to the client: hyper, under reqwest, refuses it).
#[tokio::test]
async fn an_http10_answer_with_transfer_encoding_is_not_reused() {
    let backend = RawBackend::start_with(Then::KeepServing, |b| {
        format!(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{b}\r\n0\r\n\r\n",
            b.len()
        )
    })
    .await;
    let weir = weir_for(&backend);
    let client = new_client();
    for i in 1..=3 {
        assert_eq!(body_of(&client, &weir).await, format!("conn-{i}"));
    }
    assert_eq!(backend.accepted(), 3);
}
