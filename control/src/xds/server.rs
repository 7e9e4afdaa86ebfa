//! The ADS server of `weir control`: serves the config of a [`SnapshotSource`] (the proxy's
//! state, changed through the control API or SIGHUP) to any number of ADS streams, state of
//! the world or delta.
//!
//! One hub task turns each change into a `Snapshot` (translated and encoded once, not per
//! stream) and publishes it on a `watch` channel, which also coalesces bursts. Each stream
//! sends what changed since what it last sent, per type, in the order Cluster,
//! ClusterLoadAssignment, RouteConfiguration, so new clusters exist before routes name them.
//!
//! State of the world (`StreamAggregatedResources`):
//! - Cluster: the whole set whenever any cluster changed (the xDS rule for CDS).
//! - ClusterLoadAssignment and RouteConfiguration: only the changed resources (SotW allows
//!   it for these types; a client merges them by name). An endpoint change thus sends one
//!   CLA, not the 10,000 others.
//! - Versions are the state's generations. A named (non-wildcard) subscription gets only the
//!   names it asked for.
//!
//! Delta (`DeltaAggregatedResources`, unless [`ServeOptions::delta`] is off):
//! - A resource's version is a hash of its encoded bytes, so the same resource always has
//!   the same version, across streams and restarts of the server.
//! - Per stream and type the server keeps the name -> version the client has (seeded from
//!   `initial_resource_versions`) and sends only resources whose version differs, plus
//!   `removed_resources` for names that are gone; a type with nothing to send is skipped
//!   (except the first answer to a subscription, which tells the client it has everything).
//! - Each snapshot records what changed since the one it was built from; a stream that
//!   pushed exactly that one looks at those names only (an endpoint change at 10,000
//!   services is one lookup, not a comparison of 20,000 resources), any other stream
//!   compares everything.
//! - An empty first subscription or `"*"` is a wildcard; other names subscribe to those
//!   names only, and `resource_names_unsubscribe` takes them back.
//!
//! ACKs are noted and NACKs logged with their detail; neither is answered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use weir_config::Config;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_api::pb::google::protobuf::Any;

use super::Kind;
use crate::translate::{cluster_name, load_assignment, to_resources};

/// A change of the source of truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChange {
    /// A whole config was applied.
    Config,
    /// Only one revision's endpoints changed.
    Endpoints { namespace: String, name: String },
    /// Changes were missed: resynchronise from [`SnapshotSource::current`].
    Lagged,
}

/// The changes of a source, in order.
#[async_trait::async_trait]
pub trait ChangeFeed: Send {
    /// The next change; `None` when the source is gone.
    async fn next(&mut self) -> Option<SourceChange>;
    /// A change that is already waiting, without waiting.
    fn try_next(&mut self) -> Option<SourceChange>;
}

/// The source of truth `weir control` serves (the proxy implements it for its state).
pub trait SnapshotSource: Send + Sync + 'static {
    /// (generation, config with every revision's current endpoints).
    fn current(&self) -> (u64, Config);
    /// (generation, endpoints) of one revision, `None` if it is not in the config.
    fn endpoints(&self, namespace: &str, name: &str) -> Option<(u64, Vec<String>)>;
    /// Changes from now on.
    fn subscribe(&self) -> Box<dyn ChangeFeed>;
}

/// One encoded resource and its delta version (a hash of the bytes).
#[derive(Debug)]
struct Item {
    any: Any,
    version: String,
}

/// One type's resources, by name, and their version.
#[derive(Debug, Clone, Default)]
struct TypeSet {
    version: String,
    items: Arc<BTreeMap<String, Arc<Item>>>,
}

/// What changed in one type between a snapshot and the one it was built from.
#[derive(Debug, Default)]
struct Diff {
    /// Names added or replaced.
    changed: Vec<String>,
    /// Names gone.
    removed: Vec<String>,
}

/// Everything the streams serve, indexed by `Kind as usize`.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    types: [TypeSet; 4],
    /// Unique per snapshot (0: the empty one before the first).
    id: u64,
    /// The snapshot this one was built from, and per type what changed since it: a delta
    /// stream that pushed exactly `base` looks only at those names instead of comparing all
    /// 20,000 resources of a 10,000-service config (an endpoint change is then one lookup).
    base: u64,
    diffs: [Arc<Diff>; 4],
}

fn next_snapshot_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn encode<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn item(any: Any) -> Arc<Item> {
    Arc::new(Item {
        version: content_version(&any.value),
        any,
    })
}

/// The delta version of encoded bytes: FNV-1a, 64 bits, in hex. Stable across processes
/// and builds (unlike std's hasher), so a proxy that re-dials a restarted `weir control`
/// is not sent what it already has.
fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn same(a: &Arc<Item>, b: &Arc<Item>) -> bool {
    Arc::ptr_eq(a, b) || a.any.value == b.any.value
}

/// The snapshot of the source's config; unchanged resources keep `prev`'s `Arc`s (so
/// streams compare pointers, and delta versions stay) and unchanged types keep their version.
fn build(generation: u64, cfg: &Config, prev: &Snapshot) -> Snapshot {
    let res = to_resources(cfg);
    let mut next = Snapshot {
        id: next_snapshot_id(),
        base: prev.id,
        ..Snapshot::default()
    };
    let fresh = [
        reuse(
            &res.clusters,
            |c| &c.name,
            &prev.types[Kind::Cluster as usize],
        ),
        reuse(
            &res.endpoints,
            |e| &e.cluster_name,
            &prev.types[Kind::Endpoints as usize],
        ),
        // weir control serves no Listeners: proxies keep their own listener settings.
        (BTreeMap::new(), Diff::default()),
        reuse(&res.routes, |r| &r.name, &prev.types[Kind::Routes as usize]),
    ];
    for (i, (items, diff)) in fresh.into_iter().enumerate() {
        let old = &prev.types[i];
        let changed = !diff.changed.is_empty() || !diff.removed.is_empty();
        next.diffs[i] = Arc::new(diff);
        next.types[i] = if changed || old.version.is_empty() {
            TypeSet {
                version: generation.to_string(),
                items: Arc::new(items),
            }
        } else {
            old.clone()
        };
    }
    next
}

/// Encodes `msgs` by name, taking `old`'s item for each resource equal to the old one;
/// what differs from `old`.
///
/// Equal is compared on the messages, not only the bytes: prost encodes protobuf maps
/// (metadata `Struct`s) in `HashMap` order, which differs between two equal messages, so
/// equal bytes would miss some unchanged resources and send them (with a new delta
/// version) again. Reordered maps keep the encoded length, so only same-length resources
/// with different bytes are decoded to compare.
fn reuse<M: prost::Name + Default + PartialEq>(
    msgs: &[M],
    name: impl Fn(&M) -> &String,
    old: &TypeSet,
) -> (BTreeMap<String, Arc<Item>>, Diff) {
    let mut diff = Diff::default();
    let mut items = BTreeMap::new();
    for m in msgs {
        let fresh = encode(m);
        let item = match old.items.get(name(m)) {
            Some(o) if o.any.value == fresh.value => o.clone(),
            Some(o)
                if o.any.value.len() == fresh.value.len()
                    && M::decode(o.any.value.as_slice()).is_ok_and(|d| d == *m) =>
            {
                o.clone()
            }
            _ => {
                diff.changed.push(name(m).clone());
                item(fresh)
            }
        };
        items.insert(name(m).clone(), item);
    }
    diff.removed = old
        .items
        .keys()
        .filter(|n| !items.contains_key(*n))
        .cloned()
        .collect();
    (items, diff)
}

/// How [`serve_with`] serves ADS.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Serve `DeltaAggregatedResources`; off, it answers UNIMPLEMENTED (as before delta was
    /// served, and as many servers do), so clients fall back to state of the world.
    pub delta: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { delta: true }
    }
}

/// Serves ADS (state of the world and delta) on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn SnapshotSource>,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, source, ServeOptions::default()).await
}

/// Serves ADS on `listener` as `opts` say, until the process ends.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    source: Arc<dyn SnapshotSource>,
    opts: ServeOptions,
) -> Result<(), tonic::transport::Error> {
    // Subscribe before reading the state, so that no change falls in between.
    let feed = source.subscribe();
    let first = full_snapshot(&source, Arc::new(Snapshot::default())).await;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(hub(source, feed, tx));
    let svc = AdsServer {
        snapshots: rx,
        next_stream: AtomicU64::new(1),
        delta: opts.delta,
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Requests are small; this only lets a proxy's ACKs flow without window stalls.
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .add_service(AggregatedDiscoveryServiceServer::new(svc))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

async fn full_snapshot(source: &Arc<dyn SnapshotSource>, prev: Arc<Snapshot>) -> Arc<Snapshot> {
    let source = source.clone();
    // Translating and encoding 10,000 services is CPU work: off the async threads.
    let built = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let (generation, cfg) = source.current();
        let snap = build(generation, &cfg, &prev);
        log::debug!(
            "xDS server: generation {generation} translated in {:?}",
            started.elapsed()
        );
        snap
    })
    .await;
    match built {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::error!("xDS server: building the snapshot failed: {e}");
            Arc::new(Snapshot::default())
        }
    }
}

/// Turns source changes into snapshots.
async fn hub(
    source: Arc<dyn SnapshotSource>,
    mut feed: Box<dyn ChangeFeed>,
    tx: watch::Sender<Arc<Snapshot>>,
) {
    while let Some(first) = feed.next().await {
        let mut changes = vec![first];
        while let Some(c) = feed.try_next() {
            changes.push(c);
        }
        let current = tx.borrow().clone();
        let full = changes
            .iter()
            .any(|c| !matches!(c, SourceChange::Endpoints { .. }));
        let next = if full {
            full_snapshot(&source, current).await
        } else {
            match endpoint_snapshot(&source, &current, &changes) {
                Some(s) => Arc::new(s),
                // A revision that is not in the snapshot: the config changed under us.
                None => full_snapshot(&source, current).await,
            }
        };
        tx.send_replace(next);
    }
}

/// `current` with the CLAs of the changed revisions replaced.
fn endpoint_snapshot(
    source: &Arc<dyn SnapshotSource>,
    current: &Snapshot,
    changes: &[SourceChange],
) -> Option<Snapshot> {
    let eds = Kind::Endpoints as usize;
    let mut items = (*current.types[eds].items).clone();
    let mut version = current.types[eds].version.clone();
    let mut diff = Diff::default();
    for c in changes {
        let SourceChange::Endpoints { namespace, name } = c else {
            return None;
        };
        let (generation, eps) = source.endpoints(namespace, name)?;
        let cluster = cluster_name(namespace, name);
        let slot = items.get_mut(&cluster)?;
        *slot = item(encode(&load_assignment(&cluster, &eps)));
        version = generation.to_string();
        diff.changed.push(cluster);
    }
    let mut next = current.clone();
    next.types[eds] = TypeSet {
        version,
        items: Arc::new(items),
    };
    next.id = next_snapshot_id();
    next.base = current.id;
    next.diffs = Default::default();
    next.diffs[eds] = Arc::new(diff);
    Some(next)
}

// === impl AdsServer ===

struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    next_stream: AtomicU64,
    delta: bool,
}

type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaResponseStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        Ok(self.open::<Sub, DiscoveryResponse>(request.into_inner()))
    }

    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponseStream>, Status> {
        if !self.delta {
            return Err(Status::unimplemented(
                "delta xDS is not served (weir control --no-delta); use state-of-the-world ADS",
            ));
        }
        Ok(self.open::<DeltaSub, DeltaDiscoveryResponse>(request.into_inner()))
    }
}

impl AdsServer {
    /// Starts serving one stream; its responses.
    fn open<S, R>(
        &self,
        inbound: Streaming<<Conn<S, R> as AdsStream>::Request>,
    ) -> Response<ReceiverStream<Result<R, Status>>>
    where
        Conn<S, R>: AdsStream,
    {
        let (tx, rx) = mpsc::channel(16);
        let stream = Conn {
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            node: String::new(),
            subs: Default::default(),
            nonce: 0,
            pushed: 0,
            tx,
        };
        tokio::spawn(run(stream, inbound, self.snapshots.clone()));
        Response::new(ReceiverStream::new(rx))
    }
}

/// One ADS stream of either protocol: `S` is its subscription to one type, `R` its
/// response message.
struct Conn<S, R> {
    id: u64,
    node: String,
    subs: [Option<S>; 4],
    nonce: u64,
    /// Id of the snapshot last pushed whole by `push_all` (0: none yet).
    pushed: u64,
    tx: mpsc::Sender<Result<R, Status>>,
}

/// A state-of-the-world stream.
type Stream = Conn<Sub, DiscoveryResponse>;
/// A delta stream.
type DeltaStream = Conn<DeltaSub, DeltaDiscoveryResponse>;

/// What [`run`] needs of a stream of either protocol.
trait AdsStream: Send + 'static {
    type Request: Send + 'static;
    fn on_request(
        &mut self,
        req: Self::Request,
        snap: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), Gone>> + Send;
    fn push_all(
        &mut self,
        snap: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), Gone>> + Send;
}

/// Serves one stream: its requests, and every new snapshot, until the client is gone.
async fn run<S, R>(
    mut stream: Conn<S, R>,
    mut inbound: Streaming<<Conn<S, R> as AdsStream>::Request>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) where
    Conn<S, R>: AdsStream,
{
    snapshots.mark_unchanged();
    loop {
        let step = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    let snap = snapshots.borrow().clone();
                    stream.on_request(req, &snap).await
                }
                Ok(None) => Err(Gone),
                Err(e) => {
                    log::debug!("ADS stream {}: {e}", stream.id);
                    Err(Gone)
                }
            },
            changed = snapshots.changed() => match changed {
                Ok(()) => {
                    let snap = snapshots.borrow_and_update().clone();
                    stream.push_all(&snap).await
                }
                Err(_) => Err(Gone),
            },
        };
        if step.is_err() {
            break;
        }
    }
    log::info!("ADS stream {} (node {:?}) closed", stream.id, stream.node);
}

/// Notes the node of a stream's first request that names it; the kind of a request, or
/// `None` (logged) for a type Weir does not serve.
fn identify(
    id: u64,
    node: &mut String,
    from: Option<&Node>,
    type_url: &str,
    protocol: &str,
) -> Option<Kind> {
    if node.is_empty() {
        if let Some(n) = from {
            *node = n.id.clone();
            log::info!("ADS stream {id}{protocol} from node {node:?}");
        }
    }
    match Kind::from_type_url(type_url) {
        // weir control has no listeners to give: proxies keep their own listener settings,
        // as with a go-control-plane server whose snapshot has none (no answer at all).
        Some(Kind::Listener) => {
            log::debug!("ADS stream {id} (node {node:?}): no Listeners are served");
            None
        }
        Some(kind) => Some(kind),
        None => {
            log::warn!("ADS stream {id} (node {node:?}): type {type_url:?} is not served");
            None
        }
    }
}

/// One subscription of a stream to one type.
struct Sub {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// What this stream last sent, by name.
    sent: HashMap<String, Arc<Item>>,
    /// Nonce of the last response sent; requests with an older one are stale.
    nonce: String,
    /// Version of the last response sent.
    version: String,
}

/// Why a stream ends: the client is gone.
struct Gone;

impl AdsStream for Stream {
    type Request = DiscoveryRequest;
    async fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Result<(), Gone> {
        Stream::on_request(self, req, snap).await
    }
    async fn push_all(&mut self, snap: &Snapshot) -> Result<(), Gone> {
        Stream::push_all(self, snap).await
    }
}

impl Stream {
    async fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Result<(), Gone> {
        let Some(kind) = identify(
            self.id,
            &mut self.node,
            req.node.as_ref(),
            &req.type_url,
            "",
        ) else {
            return Ok(());
        };
        let names = (!req.resource_names.is_empty()
            && !req.resource_names.iter().any(|n| n == "*"))
        .then(|| req.resource_names.iter().cloned().collect::<BTreeSet<_>>());
        let slot = &mut self.subs[kind as usize];
        let Some(sub) = slot else {
            *slot = Some(Sub {
                names,
                sent: HashMap::new(),
                nonce: String::new(),
                version: String::new(),
            });
            return self.push(kind, snap, true).await;
        };
        if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            return Ok(()); // answers an older response; a newer one is on its way
        }
        if let Some(err) = &req.error_detail {
            log::warn!(
                "ADS stream {} (node {:?}) NACKed {} version {} (keeps version {:?}): {}",
                self.id,
                self.node,
                kind.label(),
                sub.version,
                req.version_info,
                err.message
            );
        } else if !req.response_nonce.is_empty() {
            log::debug!(
                "ADS stream {} (node {:?}) ACKed {} version {}",
                self.id,
                self.node,
                kind.label(),
                req.version_info
            );
        }
        let resubscribe = req.response_nonce.is_empty() || names != sub.names;
        sub.names = names;
        if resubscribe {
            return self.push(kind, snap, true).await;
        }
        Ok(())
    }

    async fn push_all(&mut self, snap: &Snapshot) -> Result<(), Gone> {
        for kind in Kind::ALL {
            if self.subs[kind as usize].is_some() {
                self.push(kind, snap, false).await?;
            }
        }
        Ok(())
    }

    /// Sends `kind` if it changed since the last response (or always, when `forced`).
    async fn push(&mut self, kind: Kind, snap: &Snapshot, forced: bool) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let wanted: Vec<(&String, &Arc<Item>)> = set
            .items
            .iter()
            .filter(|(n, _)| sub.names.as_ref().is_none_or(|s| s.contains(*n)))
            .collect();
        let differs = |(n, a): &(&String, &Arc<Item>)| sub.sent.get(*n).is_none_or(|s| !same(s, a));
        let send: Vec<Any> = if forced {
            wanted.iter().map(|(_, a)| a.any.clone()).collect()
        } else if kind == Kind::Cluster {
            // The whole set, or nothing: a missing cluster means a removed one.
            let changed = wanted.len() != sub.sent.len() || wanted.iter().any(differs);
            if !changed {
                return Ok(());
            }
            wanted.iter().map(|(_, a)| a.any.clone()).collect()
        } else {
            let changed: Vec<Any> = wanted
                .iter()
                .filter(|e| differs(e))
                .map(|(_, a)| a.any.clone())
                .collect();
            if changed.is_empty() {
                // Resources may have gone (with their clusters); nothing to send for that.
                sub.sent.retain(|n, _| set.items.contains_key(n));
                return Ok(());
            }
            changed
        };
        sub.sent = wanted
            .iter()
            .map(|(n, a)| ((*n).clone(), (*a).clone()))
            .collect();
        self.nonce += 1;
        sub.nonce = self.nonce.to_string();
        sub.version = set.version.clone();
        let resp = DiscoveryResponse {
            version_info: set.version.clone(),
            resources: send,
            type_url: kind.type_url().into(),
            nonce: sub.nonce.clone(),
            ..Default::default()
        };
        log::debug!(
            "ADS stream {} (node {:?}): {} version {} ({} resources)",
            self.id,
            self.node,
            kind.label(),
            resp.version_info,
            resp.resources.len()
        );
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }
}

// === delta ===

/// One delta subscription of a stream to one type.
struct DeltaSub {
    /// Every resource of the type: `"*"` subscribed, or an empty first subscription.
    wildcard: bool,
    /// Whether `wildcard` came from an empty first subscription (the legacy form), which
    /// ends once the client subscribes to names without `"*"`.
    legacy: bool,
    /// Names subscribed to by name.
    names: BTreeSet<String>,
    /// Name -> version of what the client has, as far as this stream knows.
    known: HashMap<String, String>,
}

impl DeltaSub {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    async fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<(), Gone> {
        let Some(kind) = identify(
            self.id,
            &mut self.node,
            req.node.as_ref(),
            &req.type_url,
            " (delta)",
        ) else {
            return Ok(());
        };
        if let Some(err) = &req.error_detail {
            log::warn!(
                "ADS stream {} (node {:?}) NACKed {} (nonce {}): {}",
                self.id,
                self.node,
                kind.label(),
                req.response_nonce,
                err.message
            );
        } else if !req.response_nonce.is_empty() {
            log::debug!(
                "ADS stream {} (node {:?}) ACKed {} (nonce {})",
                self.id,
                self.node,
                kind.label(),
                req.response_nonce
            );
        }
        let star = |names: &[String]| names.iter().any(|n| n == "*");
        let named = |names: &[String]| -> Vec<String> {
            names.iter().filter(|n| *n != "*").cloned().collect()
        };
        let subscribe = named(&req.resource_names_subscribe);
        let slot = &mut self.subs[kind as usize];
        let Some(sub) = slot else {
            // The first request of this type: the subscription, and what the client
            // already has (a re-dialled stream), which need not be sent again.
            let legacy = req.resource_names_subscribe.is_empty();
            let mut sub = DeltaSub {
                wildcard: legacy || star(&req.resource_names_subscribe),
                legacy,
                names: subscribe.iter().cloned().collect(),
                known: req.initial_resource_versions,
            };
            sub.known
                .retain(|n, _| sub.wildcard || sub.names.contains(n));
            *slot = Some(sub);
            return self.push(kind, snap, &subscribe, true).await;
        };
        let unsubscribe = named(&req.resource_names_unsubscribe);
        if subscribe.is_empty()
            && unsubscribe.is_empty()
            && !star(&req.resource_names_subscribe)
            && !star(&req.resource_names_unsubscribe)
        {
            return Ok(()); // an ACK or NACK only
        }
        if star(&req.resource_names_subscribe) {
            sub.wildcard = true;
            sub.legacy = false;
        } else if sub.legacy && !subscribe.is_empty() {
            // Names without "*" after a legacy wildcard: from now on, those names only.
            sub.wildcard = false;
            sub.legacy = false;
        }
        if star(&req.resource_names_unsubscribe) {
            sub.wildcard = false;
            sub.legacy = false;
        }
        for n in &subscribe {
            sub.names.insert(n.clone());
            // Subscribed names are always sent: the client may have dropped its copy.
            sub.known.remove(n);
        }
        for n in &unsubscribe {
            sub.names.remove(n);
        }
        // The client drops what it no longer subscribes to, without being told.
        let DeltaSub {
            known,
            wildcard,
            names,
            ..
        } = sub;
        known.retain(|n, _| *wildcard || names.contains(n));
        self.push(kind, snap, &subscribe, false).await
    }

    async fn push_all(&mut self, snap: &Snapshot) -> Result<(), Gone> {
        // Built from the snapshot last pushed: only its diff can differ from what the
        // client has (what `known` says is checked all the same).
        let incremental = self.pushed != 0 && snap.base == self.pushed;
        for kind in Kind::ALL {
            if self.subs[kind as usize].is_none() {
                continue;
            }
            if incremental {
                self.push_diff(kind, snap).await?;
            } else {
                self.push(kind, snap, &[], false).await?;
            }
        }
        self.pushed = snap.id;
        Ok(())
    }
}

/// A delta `Resource` of `item`, named.
fn resource(name: &str, item: &Item) -> Resource {
    Resource {
        name: name.to_owned(),
        version: item.version.clone(),
        resource: Some(item.any.clone()),
        ..Default::default()
    }
}

impl DeltaStream {
    /// [`Self::push`] over the names of `snap`'s diff only.
    async fn push_diff(&mut self, kind: Kind, snap: &Snapshot) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let diff = &snap.diffs[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let resources: Vec<Resource> = diff
            .changed
            .iter()
            .filter(|n| sub.wants(n))
            .filter_map(|n| set.items.get_key_value(n))
            .filter(|(n, item)| sub.known.get(*n) != Some(&item.version))
            .map(|(n, item)| resource(n, item))
            .collect();
        let removed: Vec<String> = diff
            .removed
            .iter()
            .filter(|n| sub.known.contains_key(*n) && !set.items.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.send(kind, set, resources, removed).await
    }

    /// Sends the `kind` resources whose version the client does not have, and the names it
    /// has that are gone (and `fresh`ly subscribed names that do not exist); nothing when
    /// that is nothing, unless `always`.
    async fn push(
        &mut self,
        kind: Kind,
        snap: &Snapshot,
        fresh: &[String],
        always: bool,
    ) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let resources: Vec<Resource> = set
            .items
            .iter()
            .filter(|(n, item)| sub.wants(n) && sub.known.get(*n) != Some(&item.version))
            .map(|(n, item)| resource(n, item))
            .collect();
        let mut removed: BTreeSet<String> = sub
            .known
            .keys()
            .filter(|n| !set.items.contains_key(*n))
            .cloned()
            .collect();
        removed.extend(
            fresh
                .iter()
                .filter(|n| !set.items.contains_key(*n))
                .cloned(),
        );
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.send(kind, set, resources, removed.into_iter().collect())
            .await
    }

    /// Sends one delta response (even an empty one) and notes what the client now has.
    async fn send(
        &mut self,
        kind: Kind,
        set: &TypeSet,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), Gone> {
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        for r in &resources {
            sub.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.known.remove(n);
        }
        self.nonce += 1;
        let resp = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources,
            type_url: kind.type_url().into(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        log::debug!(
            "ADS stream {} (node {:?}): delta {} version {} ({} resources, {} removed)",
            self.id,
            self.node,
            kind.label(),
            resp.system_version_info,
            resp.resources.len(),
            resp.removed_resources.len()
        );
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
