//! Concurrency reports to the autoscaler, Knative's stat protocol (docs/metrics.md#autoscaler-reports).
//!
//! Every `interval` each revision's window is closed (so `/v1/stats` always shows the last
//! window); when an autoscaler URL is set, revisions with traffic are sent as one binary
//! WebSocket frame holding a protobuf `WireStatMessages`. A poke (first request held for a
//! revision at zero) is sent at once with concurrency 1 and one request, and that request
//! is taken off the next periodic report, as Knative's activator does. Reports made while
//! the connection is down are dropped and counted, never queued.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::state::State;

/// Knative's `Stat` (serving pkg/autoscaler/metrics/stat.proto), field numbers as there.
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

/// Where and how reports go.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// `ws://` or `wss://` URL; `None` = only close windows locally.
    pub url: Option<String>,
    pub node_id: String,
    pub interval: Duration,
}

/// Takes the revisions' pokes and runs the reporter until the process ends.
pub async fn run(state: Arc<State>, cfg: ReporterConfig) {
    let Some(mut pokes) = state.shared.pokes.take() else {
        log::error!("the autoscaler reporter runs twice; not starting it again");
        return;
    };
    let started = Instant::now();
    let (conn_tx, mut conn_rx) = mpsc::channel::<Connection>(1);
    if let Some(url) = cfg.url.clone() {
        tokio::spawn(dial_forever(url, conn_tx));
    }
    let mut conn: Option<Connection> = None;
    let mut poked: HashSet<(String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let msgs = periodic(&state, &cfg, started, &mut poked);
                if cfg.url.is_some() && !msgs.messages.is_empty() {
                    send(&state, &mut conn, &msgs).await;
                }
            }
            Some((ns, name)) = pokes.recv() => {
                if cfg.url.is_none() {
                    continue;
                }
                let msgs = WireStatMessages {
                    messages: vec![WireStatMessage {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        stat: Some(Stat {
                            pod_name: cfg.node_id.clone(),
                            average_concurrent_requests: 1.0,
                            request_count: 1.0,
                            process_uptime: started.elapsed().as_secs_f64(),
                            timestamp: unix_now(),
                            ..Stat::default()
                        }),
                    }],
                };
                if send(&state, &mut conn, &msgs).await {
                    poked.insert((ns.to_string(), name.to_string()));
                }
            }
            Some(c) = conn_rx.recv() => {
                log::info!("autoscaler connected");
                conn = Some(c);
                state.status.autoscaler_connected.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Closes every revision's window; returns the stats of those with traffic.
fn periodic(
    state: &State,
    cfg: &ReporterConfig,
    started: Instant,
    poked: &mut HashSet<(String, String)>,
) -> WireStatMessages {
    let snap = state.snapshot();
    let now = unix_now();
    let uptime = started.elapsed().as_secs_f64();
    let mut messages = Vec::new();
    for rev in snap.revisions.values() {
        let w = rev.stats.take_window();
        let key = (rev.namespace.to_string(), rev.name.to_string());
        let mut requests = w.requests as f64;
        // The poke already reported one request of this window.
        if poked.remove(&key) {
            requests = (requests - 1.0).max(0.0);
        }
        if !w.active() {
            continue;
        }
        messages.push(WireStatMessage {
            namespace: key.0,
            name: key.1,
            stat: Some(Stat {
                pod_name: cfg.node_id.clone(),
                average_concurrent_requests: w.average_concurrency,
                average_proxied_concurrent_requests: w.average_proxied_concurrency,
                request_count: requests,
                proxied_request_count: w.proxied_requests as f64,
                process_uptime: uptime,
                timestamp: now,
            }),
        });
    }
    WireStatMessages { messages }
}

type Connection = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// Sends one frame; on failure drops the connection (the dialer brings a new one).
async fn send(state: &State, conn: &mut Option<Connection>, msgs: &WireStatMessages) -> bool {
    let counter = |r: &str| {
        state
            .metrics
            .autoscaler_reports
            .with_label_values(&[r])
            .inc()
    };
    let Some(c) = conn.as_mut() else {
        counter("dropped");
        return false;
    };
    let frame = prost::Message::encode_to_vec(msgs);
    match tokio::time::timeout(Duration::from_secs(2), c.send(Message::binary(frame))).await {
        Ok(Ok(())) => {
            counter("sent");
            true
        }
        Ok(Err(e)) => {
            log::warn!("autoscaler connection lost: {e}");
            *conn = None;
            state
                .status
                .autoscaler_connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            counter("dropped");
            false
        }
        Err(_) => {
            log::warn!("autoscaler send timed out; reconnecting");
            *conn = None;
            state
                .status
                .autoscaler_connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            counter("dropped");
            false
        }
    }
}

/// Dials the autoscaler, hands over the connection, waits for it to close, and dials again
/// with capped exponential backoff and jitter.
async fn dial_forever(url: String, out: mpsc::Sender<Connection>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // TCP_NODELAY: a poke must not wait behind the previous frame's delayed ACK.
        match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
            Ok((ws, _)) => {
                backoff = Duration::from_millis(100);
                let (sink, mut stream) = ws.split();
                if out.send(sink).await.is_err() {
                    return;
                }
                // The autoscaler sends nothing we need; reading tells us when it goes away.
                while let Some(msg) = stream.next().await {
                    if msg.is_err() {
                        break;
                    }
                }
                log::warn!("autoscaler {url} closed the connection");
            }
            Err(e) => log::debug!("dialing autoscaler {url}: {e}"),
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The machine's host name (the default node id).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weir".into())
}
