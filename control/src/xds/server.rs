//! The ADS server of `weir control`: serves the config of a [`SnapshotSource`] (the proxy's
//! state, changed through the control API or SIGHUP) to any number of ADS streams.
//!
//! One hub task turns each change into a `Snapshot` (translated and encoded once, not per
//! stream) and publishes it on a `watch` channel, which also coalesces bursts. Each stream
//! sends what changed since what it last sent, per type:
//! - Cluster: the whole set whenever any cluster changed (the xDS rule for CDS).
//! - ClusterLoadAssignment and RouteConfiguration: only the changed resources (SotW allows
//!   it for these types; a client merges them by name). An endpoint change thus sends one
//!   CLA, not the 10,000 others.
//!
//! Pushes go Cluster, ClusterLoadAssignment, RouteConfiguration, so new clusters exist before
//! routes name them. A named (non-wildcard) subscription gets only the names it asked for.
//! Versions are the state's generations; ACKs are noted and NACKs logged with their detail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use weir_config::Config;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
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

/// One type's resources, by name, and their version.
#[derive(Debug, Clone, Default)]
struct TypeSet {
    version: String,
    items: Arc<BTreeMap<String, Arc<Any>>>,
}

/// Everything the streams serve, indexed by `Kind as usize`.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    types: [TypeSet; 3],
}

fn any<M: prost::Name>(m: &M) -> Arc<Any> {
    Arc::new(Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    })
}

fn same(a: &Arc<Any>, b: &Arc<Any>) -> bool {
    Arc::ptr_eq(a, b) || a.value == b.value
}

/// The snapshot of the source's config; unchanged resources keep `prev`'s `Arc`s (so
/// streams compare pointers) and unchanged types keep their version.
fn build(generation: u64, cfg: &Config, prev: &Snapshot) -> Snapshot {
    let res = to_resources(cfg);
    let fresh: [BTreeMap<String, Arc<Any>>; 3] = [
        res.clusters
            .iter()
            .map(|c| (c.name.clone(), any(c)))
            .collect(),
        res.endpoints
            .iter()
            .map(|e| (e.cluster_name.clone(), any(e)))
            .collect(),
        res.routes
            .iter()
            .map(|r| (r.name.clone(), any(r)))
            .collect(),
    ];
    let mut next = Snapshot::default();
    for (i, mut items) in fresh.into_iter().enumerate() {
        let old = &prev.types[i];
        let mut changed = items.len() != old.items.len();
        for (name, a) in items.iter_mut() {
            match old.items.get(name) {
                Some(o) if same(o, a) => *a = o.clone(),
                _ => changed = true,
            }
        }
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

/// Serves ADS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn SnapshotSource>,
) -> Result<(), tonic::transport::Error> {
    // Subscribe before reading the state, so that no change falls in between.
    let feed = source.subscribe();
    let first = full_snapshot(&source, Arc::new(Snapshot::default())).await;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(hub(source, feed, tx));
    let svc = AdsServer {
        snapshots: rx,
        next_stream: AtomicU64::new(1),
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
    for c in changes {
        let SourceChange::Endpoints { namespace, name } = c else {
            return None;
        };
        let (generation, eps) = source.endpoints(namespace, name)?;
        let cluster = cluster_name(namespace, name);
        let slot = items.get_mut(&cluster)?;
        *slot = any(&load_assignment(&cluster, &eps));
        version = generation.to_string();
    }
    let mut next = current.clone();
    next.types[eds] = TypeSet {
        version,
        items: Arc::new(items),
    };
    Some(next)
}

// === impl AdsServer ===

struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    next_stream: AtomicU64,
}

type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream {
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            node: String::new(),
            subs: Default::default(),
            nonce: 0,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner(), self.snapshots.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not served; use state-of-the-world ADS",
        ))
    }
}

/// One subscription of a stream to one type.
struct Sub {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// What this stream last sent, by name.
    sent: HashMap<String, Arc<Any>>,
    /// Nonce of the last response sent; requests with an older one are stale.
    nonce: String,
    /// Version of the last response sent.
    version: String,
}

/// One ADS stream.
struct Stream {
    id: u64,
    node: String,
    subs: [Option<Sub>; 3],
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// Why a stream ends: the client is gone.
struct Gone;

impl Stream {
    async fn run(
        mut self,
        mut inbound: Streaming<DiscoveryRequest>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ) {
        snapshots.mark_unchanged();
        loop {
            let step = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let snap = snapshots.borrow().clone();
                        self.on_request(req, &snap).await
                    }
                    Ok(None) => Err(Gone),
                    Err(e) => {
                        log::debug!("ADS stream {}: {e}", self.id);
                        Err(Gone)
                    }
                },
                changed = snapshots.changed() => match changed {
                    Ok(()) => {
                        let snap = snapshots.borrow_and_update().clone();
                        self.push_all(&snap).await
                    }
                    Err(_) => Err(Gone),
                },
            };
            if step.is_err() {
                break;
            }
        }
        log::info!("ADS stream {} (node {:?}) closed", self.id, self.node);
    }

    async fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Result<(), Gone> {
        if self.node.is_empty() {
            if let Some(n) = &req.node {
                self.node = n.id.clone();
                log::info!("ADS stream {} from node {:?}", self.id, self.node);
            }
        }
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            log::warn!(
                "ADS stream {} (node {:?}): type {:?} is not served",
                self.id,
                self.node,
                req.type_url
            );
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
        let wanted: Vec<(&String, &Arc<Any>)> = set
            .items
            .iter()
            .filter(|(n, _)| sub.names.as_ref().is_none_or(|s| s.contains(*n)))
            .collect();
        let differs = |(n, a): &(&String, &Arc<Any>)| sub.sent.get(*n).is_none_or(|s| !same(s, a));
        let send: Vec<Any> = if forced {
            wanted.iter().map(|(_, a)| (***a).clone()).collect()
        } else if kind == Kind::Cluster {
            // The whole set, or nothing: a missing cluster means a removed one.
            let changed = wanted.len() != sub.sent.len() || wanted.iter().any(differs);
            if !changed {
                return Ok(());
            }
            wanted.iter().map(|(_, a)| (***a).clone()).collect()
        } else {
            let changed: Vec<Any> = wanted
                .iter()
                .filter(|e| differs(e))
                .map(|(_, a)| (***a).clone())
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

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
