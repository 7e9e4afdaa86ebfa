//! A WebSocket server standing in for Knative's autoscaler: it records every binary frame
//! with the instant it arrived, decoded with Knative's `stat.proto` written here (module
//! [`knative`]), not with the proxy's own types, so a field number the proxy got wrong
//! decodes as a default value and fails a test. It can be stopped and started again on the
//! same port (a cut autoscaler connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// Knative's `stat.proto` (serving `pkg/autoscaler/metrics`), with Knative's field numbers.
/// Written for the test on purpose: a field number the proxy got wrong decodes as a default
/// value here and fails an assertion.
pub mod knative {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stat {
        #[prost(string, tag = "1")]
        pub pod_name: String,
        #[prost(double, tag = "2")]
        pub average_concurrent_requests: f64,
        #[prost(double, tag = "3")]
        pub average_proxied_concurrent_requests: f64,
        #[prost(double, tag = "4")]
        pub request_count: f64,
        #[prost(double, tag = "5")]
        pub proxied_request_count: f64,
        #[prost(double, tag = "6")]
        pub process_uptime: f64,
        #[prost(int64, tag = "7")]
        pub timestamp: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WireStatMessage {
        #[prost(string, tag = "1")]
        pub namespace: String,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub stat: Option<Stat>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WireStatMessages {
        #[prost(message, repeated, tag = "1")]
        pub messages: Vec<WireStatMessage>,
    }
}

pub use knative::{Stat, WireStatMessages};

/// One binary frame as the test autoscaler received it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When it was read, on the server's own thread.
    pub at: Instant,
    /// The same moment as Unix seconds, for `Stat.timestamp`.
    pub unix: f64,
    /// Which connection it came on (0, 1, ... in accept order).
    pub conn: usize,
    pub msgs: WireStatMessages,
}

impl Frame {
    /// The stat of revision `namespace/name` in this frame, if it is there.
    pub fn revision_stat(&self, namespace: &str, name: &str) -> Option<&Stat> {
        self.msgs
            .messages
            .iter()
            .find(|m| m.namespace == namespace && m.name == name)
            .and_then(|m| m.stat.as_ref())
    }
}

/// Whether a stat is a scale-from-zero poke (docs/metrics.md#the-poke: concurrency 1, one request).
/// A periodic report of a revision with held requests has neither exactly.
pub fn is_poke(s: &Stat) -> bool {
    s.average_concurrent_requests == 1.0 && s.request_count == 1.0
}

/// A WebSocket server standing in for Knative's autoscaler. Runs on its own thread and
/// runtime, so arrival times are taken promptly whatever the test is doing; stops on drop.
pub struct StatServer {
    addr: SocketAddr,
    frames: Arc<Mutex<Vec<Frame>>>,
    /// Anything that is not a decodable binary frame: text frames, bad protobuf, failed
    /// handshakes.
    problems: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatServer {
    pub fn start() -> StatServer {
        StatServer::serve(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    /// Serves on `listener` (a listening socket, e.g. one reserved before the proxy started).
    pub fn serve(listener: std::net::TcpListener) -> StatServer {
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("stat-server".into())
            .spawn({
                let frames = frames.clone();
                let problems = problems.clone();
                let connections = connections.clone();
                move || accept_loop(listener, frames, problems, connections, rx)
            })
            .expect("spawn the stat server");
        StatServer {
            addr,
            frames,
            problems,
            connections,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames received so far.
    pub fn len(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// The first frame at index `from` or later that satisfies `pred`, waiting for it up to
    /// `timeout`; panics with every frame so far when none comes.
    pub async fn wait_frame(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> (usize, Frame) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let frames = self.frames.lock().unwrap();
                if let Some(i) = (from..frames.len()).find(|&i| pred(&frames[i])) {
                    return (i, frames[i].clone());
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching report frame (index >= {from}) within {timeout:?}; \
                     frames: {:#?}; problems: {:?}",
                    self.frames(),
                    self.problems.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Frames `from..=to`, waiting for frame `to` up to `timeout`.
    pub async fn wait_frames(&self, from: usize, to: usize, timeout: Duration) -> Vec<Frame> {
        self.wait_frame(to, timeout, |_| true).await;
        self.frames()[from..=to].to_vec()
    }

    /// Every frame was binary and decoded; every stat names `pod` as its `pod_name`.
    pub fn assert_clean(&self, pod: &str) {
        let problems = self.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "test autoscaler saw: {problems:?}");
        for f in self.frames() {
            assert!(!f.msgs.messages.is_empty(), "an empty report: {f:?}");
            for m in &f.msgs.messages {
                let s = m
                    .stat
                    .as_ref()
                    .unwrap_or_else(|| panic!("a message without a stat: {f:?}"));
                assert_eq!(s.pod_name, pod, "pod_name: {f:?}");
            }
        }
    }
}

impl Drop for StatServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: std::net::TcpListener,
    frames: Arc<Mutex<Vec<Frame>>>,
    problems: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a stat server runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let conn = connections.fetch_add(1, Ordering::SeqCst);
            let frames = frames.clone();
            let problems = problems.clone();
            tokio::spawn(async move {
                let mut ws = match tokio_tungstenite::accept_async(stream).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        problems.lock().unwrap().push(format!("handshake: {e}"));
                        return;
                    }
                };
                while let Some(msg) = ws.next().await {
                    let at = Instant::now();
                    let unix = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .expect("after 1970")
                        .as_secs_f64();
                    match msg {
                        Ok(Message::Binary(data)) => {
                            match <WireStatMessages as prost::Message>::decode(&data[..]) {
                                Ok(msgs) => frames.lock().unwrap().push(Frame {
                                    at,
                                    unix,
                                    conn,
                                    msgs,
                                }),
                                Err(e) => problems
                                    .lock()
                                    .unwrap()
                                    .push(format!("undecodable frame ({e}): {data:?}")),
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        Ok(other) => problems
                            .lock()
                            .unwrap()
                            .push(format!("not a binary frame: {other:?}")),
                    }
                }
            });
        }
    });
    // Dropping the runtime closes every connection.
}
