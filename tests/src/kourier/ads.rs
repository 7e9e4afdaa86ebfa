//! An ADS server that serves a snapshot the way go-control-plane 0.14's snapshot cache does
//! for net-kourier (`cache.NewSnapshotCache(true, IDHash, nil)`; Kourier sets one snapshot
//! for node `3scale-kourier-gateway`, a new UUID version on every change):
//!
//! - State of the world only; a delta stream is refused with UNIMPLEMENTED (Kourier serves
//!   delta too, but acts on state-of-the-world NACKs only, which is why its gateways are run
//!   with `--xds-sotw`).
//! - A stream gets a snapshot only if its node id has one; legacy wildcard subscriptions.
//! - A request whose version differs from the snapshot's is answered with every resource of
//!   its type; one that has it waits for the next snapshot. A type the snapshot lacks
//!   (ClusterLoadAssignment: Kourier sends no EDS) is never answered.
//! - A NACK is recorded and nothing is resent until a new snapshot.
//! - On a new snapshot the open subscriptions are answered in the order Cluster, Listener,
//!   Route (go-control-plane's ADS ordering).
//!
//! It shares none of `weir control`'s code: xds-api's generated types and tonic only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prost::Name;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use weir_control::tonic::{self, Request, Response, Status, Streaming};
use weir_control::xds_api::pb::envoy::config::cluster::v3::Cluster;
use weir_control::xds_api::pb::envoy::config::listener::v3::Listener;
use weir_control::xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use weir_control::xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weir_control::xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weir_control::xds_api::pb::google::protobuf::Any;

use super::resources::Snapshot;

/// The types in go-control-plane's ADS response order (no endpoints: Kourier sends none).
const ORDER: [&str; 3] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

/// A snapshot with its version, encoded per type.
#[derive(Debug, Clone, Default)]
struct Versioned {
    version: String,
    /// type URL -> resources.
    resources: HashMap<&'static str, Vec<Any>>,
}

/// A NACK a gateway sent: its node, the type, the version it still has, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub node: String,
    pub type_url: String,
    pub version: String,
    pub message: String,
}

/// An ACK: node, type, version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub node: String,
    pub type_url: String,
    pub version: String,
}

#[derive(Default)]
struct Shared {
    /// node id -> its snapshot.
    snapshots: HashMap<String, Versioned>,
    nacks: Vec<Nack>,
    acks: Vec<Ack>,
}

/// The server: on a thread and runtime of its own, on 127.0.0.1:0; stops on drop.
pub struct KourierAds {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KourierAds {
    pub fn start() -> KourierAds {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the ADS server");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (changed, _) = watch::channel(0u64);
        let (tx, rx) = oneshot::channel::<()>();
        let service = Service {
            shared: shared.clone(),
            changed: changed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kourier-ads".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("an ADS runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let serve = tonic::transport::Server::builder()
                        .add_service(
                            AggregatedDiscoveryServiceServer::new(service)
                                .max_decoding_message_size(256 << 20)
                                .max_encoding_message_size(256 << 20),
                        )
                        .serve_with_incoming(TcpListenerStream::new(listener));
                    // Stop at once, open streams and all (a graceful stop would wait for
                    // the gateways to hang up); dropping the runtime ends the streams.
                    tokio::select! {
                        _ = serve => {}
                        _ = rx => {}
                    }
                });
                rt.shutdown_background();
            })
            .expect("spawn the ADS thread");
        KourierAds {
            addr,
            shared,
            changed,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `weir proxy --xds`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets `node`'s snapshot under a new random version (Kourier: `uuid.NewString()`) and
    /// pushes it to the node's streams. Returns the version.
    pub fn set_snapshot(&self, node: &str, snapshot: &Snapshot) -> String {
        let version = uuid();
        let encode = |v: &[Any]| v.to_vec();
        let mut resources = HashMap::new();
        resources.insert(
            ORDER[0],
            encode(
                &snapshot
                    .clusters
                    .iter()
                    .map(any::<Cluster>)
                    .collect::<Vec<_>>(),
            ),
        );
        resources.insert(
            ORDER[1],
            encode(
                &snapshot
                    .listeners
                    .iter()
                    .map(any::<Listener>)
                    .collect::<Vec<_>>(),
            ),
        );
        resources.insert(
            ORDER[2],
            encode(
                &snapshot
                    .routes
                    .iter()
                    .map(any::<RouteConfiguration>)
                    .collect::<Vec<_>>(),
            ),
        );
        self.lock().snapshots.insert(
            node.to_string(),
            Versioned {
                version: version.clone(),
                resources,
            },
        );
        self.changed.send_modify(|n| *n += 1);
        version
    }

    /// Every NACK received so far.
    pub fn nacks(&self) -> Vec<Nack> {
        self.lock().nacks.clone()
    }

    /// Every ACK received so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    /// Whether `node` ACKed `version` of every type.
    pub fn acked(&self, node: &str, version: &str) -> bool {
        let s = self.lock();
        ORDER.iter().all(|t| {
            s.acks
                .iter()
                .any(|a| a.node == node && a.type_url == *t && a.version == version)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for KourierAds {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn any<M: Name + prost::Message>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A version-4 UUID from the thread's RNG (formatting only; nothing depends on its bits).
fn uuid() -> String {
    let a: u128 = (u128::from(rand_u64()) << 64) | u128::from(rand_u64());
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[derive(Clone)]
struct Service {
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One subscription of a stream: the version last sent, if any.
#[derive(Default)]
struct Sub {
    sent: Option<String>,
    nonce: u64,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<DiscoveryResponse, Status>>(16);
        let shared = self.shared.clone();
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let mut node = String::new();
            let mut subs: HashMap<String, Sub> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        if node.is_empty() {
                            if let Some(n) = &req.node {
                                node = n.id.clone();
                            }
                        }
                        let first = !subs.contains_key(&req.type_url);
                        let sub = subs.entry(req.type_url.clone()).or_default();
                        if !first && req.response_nonce != sub.nonce.to_string() {
                            continue; // answers an older response
                        }
                        {
                            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(err) = &req.error_detail {
                                s.nacks.push(Nack {
                                    node: node.clone(),
                                    type_url: req.type_url.clone(),
                                    version: req.version_info.clone(),
                                    message: err.message.clone(),
                                });
                                // No resend until the next snapshot.
                                continue;
                            }
                            if !req.response_nonce.is_empty() {
                                s.acks.push(Ack {
                                    node: node.clone(),
                                    type_url: req.type_url.clone(),
                                    version: req.version_info.clone(),
                                });
                            }
                        }
                        if first || req.response_nonce.is_empty() {
                            // A (re)subscription: answer if the client's version is stale.
                            let snap = snapshot_of(&shared, &node);
                            if let Some(snap) = snap {
                                if req.version_info != snap.version {
                                    if let Some(resp) = respond(&snap, &req.type_url, sub, &mut nonce) {
                                        if tx.send(Ok(resp)).await.is_err() { return; }
                                    }
                                }
                            }
                        }
                    }
                    r = changed.changed() => {
                        if r.is_err() { return; }
                        let Some(snap) = snapshot_of(&shared, &node) else { continue };
                        for type_url in ORDER {
                            let Some(sub) = subs.get_mut(type_url) else { continue };
                            if sub.sent.as_deref() == Some(snap.version.as_str()) {
                                continue;
                            }
                            if let Some(resp) = respond(&snap, type_url, sub, &mut nonce) {
                                if tx.send(Ok(resp)).await.is_err() { return; }
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this Kourier-shaped server speaks state of the world only",
        ))
    }
}

fn snapshot_of(shared: &Arc<Mutex<Shared>>, node: &str) -> Option<Versioned> {
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshots
        .get(node)
        .cloned()
}

/// Every resource of `type_url` at the snapshot's version; `None` when the snapshot has no
/// such type (never answered).
fn respond(
    snap: &Versioned,
    type_url: &str,
    sub: &mut Sub,
    nonce: &mut u64,
) -> Option<DiscoveryResponse> {
    let resources = snap.resources.get(type_url)?;
    *nonce += 1;
    sub.sent = Some(snap.version.clone());
    sub.nonce = *nonce;
    Some(DiscoveryResponse {
        version_info: snap.version.clone(),
        resources: resources.clone(),
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    })
}
