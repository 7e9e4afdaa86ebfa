//! The edge's protections (`limits`): request heads must arrive in time (first and
//! kept-alive requests), idle connections are closed (HTTP/1 and, with a GOAWAY, HTTP/2), a
//! connection cap that makes new connections wait in the backlog rather than be dropped,
//! overload answered 503 with `Retry-After`, and what must never be cut (a WebSocket idle
//! for longer than the idle timeout, a response slower than the header timeout); then the
//! zero-downtime binary upgrade under load.
//!
//! Waits are on observable events (a connection closed, an answer) with a deadline; the
//! only fixed waits check that something does NOT happen within a bound.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::protocols::{ws_backend, ws_connect, ws_echo};
use weir_tests::{eventually, get, new_client, try_send, weir_bin, Backend, Signal, Weir};

const HOST: &str = "edge.default.example.com";
const REV: &str = "edge-00001";

fn config(endpoints: Vec<String>, limits: Value) -> Value {
    json!({
        "limits": limits,
        "services": [{"name": "edge", "traffic": [{"revision": REV, "percent": 100}]}],
        "revisions": [{"name": REV, "endpoints": endpoints}],
    })
}

fn start(backend: &Backend, limits: Value) -> Weir {
    Weir::start(weir_bin!(), &config(vec![backend.endpoint()], limits))
}

/// Reads until the peer closes the connection (or `within` passes): what arrived, and when
/// the close came (`None`: still open).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    Some(Instant::now()),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
    }
}

fn request(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

// === header_read_timeout ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_at_the_header_timeout() {
    let backend = Backend::start(REV);
    let weir = start(&backend, json!({"header_read_timeout": "1s"}));

    // First request of a connection: one byte every 200 ms never finishes the head.
    let mut s = TcpStream::connect(weir.http_addr()).await.unwrap();
    let started = Instant::now();
    let trickle = request(HOST);
    let mut sent = 0;
    let (answer, closed) = loop {
        if sent < trickle.len() - 2 {
            s.write_all(&trickle.as_bytes()[sent..sent + 1])
                .await
                .unwrap();
            sent += 1;
        }
        let (got, closed) = read_until_closed(&mut s, Duration::from_millis(200)).await;
        if closed.is_some() || !got.is_empty() {
            break (got, closed.unwrap_or_else(Instant::now));
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut");
    };
    let took = closed - started;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    assert_eq!(
        backend.requests(),
        0,
        "a partial head never reaches a backend"
    );

    // A connection that sends nothing is closed at the timeout, without an answer.
    let mut s = TcpStream::connect(weir.http_addr()).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(answer, "");
    let took = closed.expect("closed") - started;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // The next request on a kept-alive connection: its head is timed from its first byte.
    let mut s = TcpStream::connect(weir.http_addr()).await.unwrap();
    s.write_all(request(HOST).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let took = closed.expect("closed") - started;
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_header_timeout_is_not_cut() {
    let backend = Backend::start(REV);
    let weir = start(
        &backend,
        json!({"header_read_timeout": "1s", "idle_timeout": "1s"}),
    );
    // Knative: no timeout once a request reached a backend.
    let slow_head = get(&format!("{}/delay/2500", weir.http_url()), HOST, &[]).await;
    assert_eq!(slow_head.status, 200);
    let slow_body = get(&format!("{}/delay-body/2500", weir.http_url()), HOST, &[]).await;
    assert_eq!(slow_body.status, 200);
    assert_eq!(slow_body.json()["revision"], REV);
}

// === idle_timeout ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let backend = Backend::start(REV);
    let weir = start(&backend, json!({"idle_timeout": "1s"}));
    let mut s = TcpStream::connect(weir.http_addr()).await.unwrap();
    s.write_all(request(HOST).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(rest, "");
    let idle = closed.expect("the idle connection is closed") - idle_from;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
}

/// HTTP/2 frames: 9-byte header (length, type, flags, stream id).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_a_goaway() {
    let backend = Backend::start(REV);
    let weir = start(&backend, json!({"idle_timeout": "1s"}));
    let mut s = TcpStream::connect(weir.http_addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // empty SETTINGS
    let started = Instant::now();
    // Read frames until a GOAWAY (type 7), answering SETTINGS and PING as a client does.
    let mut buf = Vec::new();
    let mut goaway = None;
    while goaway.is_none() && started.elapsed() < Duration::from_secs(5) {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                0x4 if flags & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                0x6 if flags & 1 == 0 => s.write_all(&frame(0x6, 1, 0, &payload)).await.unwrap(),
                0x7 => goaway = Some((Instant::now(), payload)),
                _ => {}
            }
        }
    }
    let (at, payload) = goaway.expect("a GOAWAY on the idle connection");
    let error_code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert_eq!(error_code, 0, "NO_ERROR");
    let idle = at - started;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "GOAWAY after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_idle_longer_than_the_idle_timeout_lives() {
    let ws = ws_backend(REV);
    let weir = Weir::start(
        weir_bin!(),
        &config(
            vec![ws.endpoint()],
            json!({"idle_timeout": "1s", "header_read_timeout": "1s"}),
        ),
    );
    let (socket, _) = ws_connect(weir.http_addr(), HOST).await;
    // Idle for more than twice the idle timeout: an upgraded connection has a request in
    // flight for its whole life.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws_echo(socket, "after idling").await;
}

// === max_connections ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_wait_and_are_served() {
    let backend = Backend::start(REV);
    // Two listeners (http, internal): while the http one is full, the internal one's
    // waiting accept holds one slot, so 3 of 4 are left for http connections.
    let weir = start(&backend, json!({"max_connections": 4}));
    let mut open = Vec::new();
    for _ in 0..3 {
        let s = TcpStream::connect(weir.http_addr()).await.unwrap();
        open.push(s);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            weir.metric("weir_connections", &[]).await == Some(4.0)
        })
        .await,
        "{:?}",
        weir.metric("weir_connections", &[]).await
    );
    // One more: the kernel takes it into the backlog, Weir does not accept it yet.
    let mut extra = TcpStream::connect(weir.http_addr()).await.unwrap();
    extra.write_all(request(HOST).as_bytes()).await.unwrap();
    let (nothing, closed) = read_until_closed(&mut extra, Duration::from_millis(700)).await;
    assert_eq!(
        (nothing.as_str(), closed.is_some()),
        ("", false),
        "not served while full; weir_connections {:?}",
        weir.metric("weir_connections", &[]).await
    );
    assert!(weir.metric("weir_connection_limit_waits", &[]).await >= Some(1.0));
    // A slot frees: the waiting connection is accepted and served.
    drop(open.pop());
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(weir.metric("weir_connections_max", &[]).await, Some(4.0));
}

// === overload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_503_with_retry_after() {
    // Held memory: 1 MiB for the whole process is 64 held requests of 16 KiB each.
    let weir = Weir::start(weir_bin!(), &config(vec![], json!({"held_memory": "1MiB"})));
    let client = new_client();
    let url = format!("{}/", weir.http_url());
    let held: Vec<_> = (0..64)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { try_send(&client, &url, HOST, &[]).await })
        })
        .collect();
    weir.wait_held("default", REV, 64, Duration::from_secs(10))
        .await;
    let r = get(&url, HOST, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        weir.metric(
            "weir_overload_rejections_total",
            &[("reason", "held_memory")]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        weir.metric("weir_held_memory_bytes", &[]).await,
        Some((64 * 16384) as f64)
    );
    for h in held {
        h.abort();
    }
    // Once they are gone, requests wait again.
    weir.wait_held("default", REV, 0, Duration::from_secs(10))
        .await;

    // Near max_connections, a request that would wait is refused at once as well.
    let weir = Weir::start(weir_bin!(), &config(vec![], json!({"max_connections": 4})));
    let idle: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(TcpStream::connect(weir.http_addr()).await.unwrap());
        }
        v
    };
    let started = Instant::now();
    let r = get(&format!("{}/", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not after holding"
    );
    assert_eq!(
        weir.metric(
            "weir_overload_rejections_total",
            &[("reason", "connections")]
        )
        .await,
        Some(1.0)
    );
    drop(idle);
}

// === zero-downtime binary upgrade ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_fails_no_request() {
    let backend = Backend::start(REV);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let cfg = config(vec![backend.endpoint()], json!({}));
    let mut old = Weir::builder(weir_bin!(), &cfg)
        .arg("--upgrade-sock")
        .arg(sock.to_string_lossy())
        .start();
    let addr: SocketAddr = old.http_addr();

    // Load on kept-alive connections and on new ones, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut loads = Vec::new();
    for pooled in [true, false] {
        let (stop, ok) = (stop.clone(), ok.clone());
        loads.push(tokio::spawn(async move {
            let client = if pooled {
                new_client()
            } else {
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            };
            let url = format!("http://{addr}/");
            let mut failed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match try_send(&client, &url, HOST, &[]).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            failed
        }));
    }
    let served = |n: u64| {
        let ok = ok.clone();
        async move {
            eventually(Duration::from_secs(10), || async {
                ok.load(Ordering::SeqCst) >= n
            })
            .await
        }
    };
    assert!(served(50).await);

    // The new process takes the sockets over; the old one hands them over on SIGQUIT.
    let new = Weir::builder(weir_bin!(), &cfg)
        .addresses_of(&old)
        .arg("--upgrade")
        .arg("--upgrade-sock")
        .arg(sock.to_string_lossy())
        .without_waiting_for_ready()
        .start();
    assert!(
        eventually(Duration::from_secs(10), || async { sock.exists() }).await,
        "the new process waits for the sockets"
    );
    old.signal(Signal::SIGQUIT);
    let status = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(30)))
        .expect("the old process exits once drained");
    assert!(status.success(), "{status:?}");
    let before = ok.load(Ordering::SeqCst);
    assert!(served(before + 50).await, "the new process serves");
    // Its admin listener is taken over once the old process is gone.
    let admin = new_client();
    let readyz = format!("{}/readyz", new.admin_url());
    assert!(
        eventually(Duration::from_secs(10), || async {
            try_send(&admin, &readyz, "", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for l in loads {
        let failed = l.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
    assert!(ok.load(Ordering::SeqCst) > 100);
}
