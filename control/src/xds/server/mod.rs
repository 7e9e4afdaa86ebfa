//! The ADS server of `weir control`: serves the [`ConfigStore`] to any number of ADS
//! streams, state of the world or delta.
//!
//! - `snapshot`: the resources of the store's generation, translated per changed object
//!   and encoded once for every stream; its hub follows the store's change feed and
//!   publishes each snapshot on a `watch` channel, which also coalesces bursts.
//! - `sotw` and `delta`: what one stream of each protocol sends. Each sends what changed
//!   since what it last sent, per type, in the order Cluster, ClusterLoadAssignment,
//!   RouteConfiguration, so new clusters exist before routes name them.
//! - This module: the gRPC service, and the loop that drives one stream.
//!
//! State of the world (`StreamAggregatedResources`):
//! - Cluster and RouteConfiguration: the whole set whenever any of it changed (CDS's rule;
//!   for routes because Weir serves one RouteConfiguration per service or ingress and a
//!   state-of-the-world response can only remove one by leaving it out).
//! - ClusterLoadAssignment: only the changed ones (a client merges them by name), so an
//!   endpoint change at 10,000 services sends one.
//! - Versions are the store's generations. A named (non-wildcard) subscription gets only the
//!   names it asked for.
//!
//! Delta (`DeltaAggregatedResources`, unless [`ServeOptions::delta`] is off):
//! - A resource's version is a hash of its encoded bytes, so the same resource always has
//!   the same version, across streams and restarts of the server.
//! - Per stream and type the server keeps the name -> version the client has (seeded from
//!   `initial_resource_versions`) and sends only resources whose version differs, plus
//!   `removed_resources` for names that are gone; a type with nothing to send is skipped
//!   (except the first answer to a subscription, which tells the client it has everything).
//! - A stream that pushed exactly the snapshot the new one was built from looks at the
//!   new one's changed names only; any other stream compares everything.
//! - An empty first subscription or `"*"` is a wildcard; other names subscribe to those
//!   names only, and `resource_names_unsubscribe` takes them back.
//!
//! ACKs are noted and NACKs logged with their detail; neither is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::Kind;
use crate::store::ConfigStore;
use delta::DeltaSub;
use snapshot::XdsSnapshot;
use sotw::Sub;

mod delta;
mod snapshot;
mod sotw;

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

/// Serves `store` over ADS (state of the world and delta) on `listener` until the process
/// ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<ConfigStore>,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, store, ServeOptions::default()).await
}

/// Serves ADS on `listener` as `opts` say, until the process ends.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Arc<ConfigStore>,
    opts: ServeOptions,
) -> Result<(), tonic::transport::Error> {
    // Subscribe before reading the store, so that no change falls in between.
    let feed = store.subscribe();
    let first = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || snapshot::first(&store))
            .await
            .unwrap_or_default()
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(snapshot::hub(store, feed, tx));
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

struct AdsServer {
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
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
        snap: &XdsSnapshot,
    ) -> impl std::future::Future<Output = Result<(), Gone>> + Send;
    fn push_all(
        &mut self,
        snap: &XdsSnapshot,
    ) -> impl std::future::Future<Output = Result<(), Gone>> + Send;
}

/// Serves one stream: its requests, and every new snapshot, until the client is gone.
async fn run<S, R>(
    mut stream: Conn<S, R>,
    mut inbound: Streaming<<Conn<S, R> as AdsStream>::Request>,
    mut snapshots: watch::Receiver<Arc<XdsSnapshot>>,
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

/// Why a stream ends: the client is gone.
struct Gone;

#[cfg(test)]
mod tests;
