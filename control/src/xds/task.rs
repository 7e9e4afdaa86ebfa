//! The I/O half of `weir proxy --xds`: one ADS stream over tonic, driving a sans-io client
//! and handing its updates to an [`XdsSink`] (the proxy's state).
//!
//! Each connection first opens a delta stream ([`DeltaClient`]); a server that answers
//! UNIMPLEMENTED (when the stream opens or as its first message) gets a state-of-the-world
//! stream ([`SotwClient`]) on the same connection instead ([`ClientOptions::sotw_only`]:
//! state of the world only). Both clients hold the same state,
//! so switching keeps the config and what was received. Each re-dial tries delta again.
//!
//! A lost stream is re-dialled with capped exponential backoff and jitter; the proxy keeps
//! serving the last config meanwhile. ACKs are sent after the sink applied the update, so an
//! ACK means "in force", and a sink refusal becomes a NACK.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::client::{SotwClient, Update};
use super::delta_client::DeltaClient;
use super::state::{Output, XdsConfig};
use super::Kind;

/// Where updates go. The proxy implements it for its state; this crate does not know it.
pub trait XdsSink: Send + Sync {
    /// Applies a whole config from xDS (ingresses, revisions and what the Listeners say);
    /// the new generation.
    fn apply(&self, cfg: XdsConfig) -> Result<u64, String>;
    /// Replaces one revision's endpoints.
    fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Result<u64, String>;
    /// The stream went up or down (the `weir_xds_connected` gauge).
    fn connected(&self, up: bool);
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Responses already buffered are judged together and applied once (a server pushes a
/// change as Cluster, ClusterLoadAssignment and RouteConfiguration responses back to back;
/// one recompile instead of three).
const MAX_BATCH: usize = 16;
/// A 10,000-service RouteConfiguration is several MB; tonic's default limit is 4 MB.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// HTTP/2 receive window of the stream and connection.
const WINDOW: u32 = 16 * 1024 * 1024;

/// How the proxy speaks to its ADS server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// e.g. `http://127.0.0.1:18000`.
    pub url: String,
    pub node_id: String,
    /// State of the world only, never delta (`weir proxy --xds-sotw`): for servers that
    /// serve delta but only act on state-of-the-world NACKs (Kourier).
    pub sotw_only: bool,
}

/// Runs the ADS client forever: dial, stream, re-dial.
pub async fn run_client(opts: ClientOptions, sink: Arc<dyn XdsSink>) {
    let ClientOptions {
        url,
        node_id,
        sotw_only,
    } = opts;
    let mut client = if sotw_only {
        Client::Sotw(SotwClient::new(node_id))
    } else {
        Client::Delta(DeltaClient::new(node_id))
    };
    let mut backoff = BACKOFF_MIN;
    let mut fallbacks = 0u64;
    loop {
        let (back, ended) = session(&url, client, &sink, &mut fallbacks, sotw_only).await;
        client = back;
        match ended {
            Ok(got_response) => {
                log::warn!("xDS: stream to {url} ended; re-dialling");
                if got_response {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(StreamError {
                message,
                got_response,
            }) => {
                log::warn!("xDS: {url}: {message}; re-dialling in about {backoff:?}");
                if got_response {
                    backoff = BACKOFF_MIN;
                }
            }
        }
        sink.connected(false);
        // Full jitter over the upper half, so proxies that lost the same server spread out.
        let half = backoff.as_millis() as u64 / 2;
        let wait = Duration::from_millis(half + rand::random_range(0..=half));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The client of the protocol last spoken; it changes hands when a stream falls back.
enum Client {
    Delta(DeltaClient),
    Sotw(SotwClient),
}

struct StreamError {
    message: String,
    got_response: bool,
}

/// How a stream ended: `Ok(got_response)` when the server closed it; `got_response`: a
/// response arrived on it (the server is healthy enough to reset the backoff).
type Ended = Result<bool, StreamError>;

fn err(message: String, got_response: bool) -> StreamError {
    StreamError {
        message,
        got_response,
    }
}

/// One connection: a delta stream, or a state-of-the-world one where delta is not served.
async fn session(
    url: &str,
    client: Client,
    sink: &Arc<dyn XdsSink>,
    fallbacks: &mut u64,
    sotw_only: bool,
) -> (Client, Ended) {
    let channel = match connect(url).await {
        Ok(c) => c,
        Err(e) => return (client, Err(e)),
    };
    if sotw_only {
        let mut sotw = match client {
            Client::Sotw(s) => s,
            Client::Delta(d) => SotwClient::from(d),
        };
        let ended = stream_sotw(url, channel, &mut sotw, sink).await;
        return (Client::Sotw(sotw), ended);
    }
    let mut delta = match client {
        Client::Delta(d) => d,
        Client::Sotw(s) => DeltaClient::from(s),
    };
    let why = match stream_delta(url, channel.clone(), &mut delta, sink).await {
        Streamed::Ended(ended) => return (Client::Delta(delta), ended),
        Streamed::Unimplemented(why) => why,
    };
    // Said once at info level; a re-dial tries delta again, and says it again at debug.
    *fallbacks += 1;
    if *fallbacks == 1 {
        log::info!(
            "xDS: {url} does not serve delta xDS ({why}); using state of the world on this \
             connection and trying delta again on each re-dial"
        );
    } else {
        log::debug!("xDS: {url} does not serve delta xDS ({why}); state of the world");
    }
    let mut sotw = SotwClient::from(delta);
    let ended = stream_sotw(url, channel, &mut sotw, sink).await;
    (Client::Sotw(sotw), ended)
}

async fn connect(url: &str) -> Result<Channel, StreamError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| err(format!("bad URL: {e}"), false))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A control plane that vanishes without a FIN is noticed within ~40 s.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        // HTTP/2's default 64 KiB windows make a multi-MB RouteConfiguration crawl in
        // window-update round trips; a large window lets it arrive in one go.
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW);
    endpoint
        .connect()
        .await
        .map_err(|e| err(format!("connect: {e}"), false))
}

fn ads(channel: Channel) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// A delta stream's end, or the server's word that it does not serve delta.
enum Streamed {
    Ended(Ended),
    Unimplemented(String),
}

async fn stream_delta(
    url: &str,
    channel: Channel,
    client: &mut DeltaClient,
    sink: &Arc<dyn XdsSink>,
) -> Streamed {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    for r in client.initial_requests() {
        // The receiver is alive (below); the channel has room for these three.
        let _ = tx.try_send(r);
    }
    let inbound = match ads(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => {
            return Streamed::Unimplemented(s.message().to_string())
        }
        Err(s) => {
            return Streamed::Ended(Err(err(format!("delta ADS stream refused: {s}"), false)))
        }
    };
    log::info!("xDS: delta stream to {url} established");
    sink.connected(true);
    match drive(client, sink, tx, inbound).await {
        // A server may accept the call and end it at once with UNIMPLEMENTED.
        Err(Drive::Status(s, false)) if s.code() == Code::Unimplemented => {
            Streamed::Unimplemented(s.message().to_string())
        }
        other => Streamed::Ended(other.map_err(Drive::into_error)),
    }
}

async fn stream_sotw(
    url: &str,
    channel: Channel,
    client: &mut SotwClient,
    sink: &Arc<dyn XdsSink>,
) -> Ended {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    for r in client.initial_requests() {
        // The receiver is alive (below); the channel has room for these three.
        let _ = tx.try_send(r);
    }
    let inbound = ads(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| err(format!("ADS stream refused: {s}"), false))?
        .into_inner();
    log::info!("xDS: stream to {url} established (state of the world)");
    sink.connected(true);
    drive(client, sink, tx, inbound)
        .await
        .map_err(Drive::into_error)
}

/// One protocol's sans-io client, as [`drive`] and [`handle_batch`] use it.
trait Protocol: Send {
    type Request: Send + 'static;
    type Response: Send + 'static;
    fn on_response(&mut self, resp: Self::Response) -> Output<Self::Request>;
    fn refused(&mut self, why: &str) -> Option<Self::Request>;
    fn nonce(req: &Self::Request) -> &str;
    /// What a response carries, for the debug log.
    fn describe(resp: &Self::Response) -> String;
}

impl Protocol for SotwClient {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    fn on_response(&mut self, resp: DiscoveryResponse) -> Output<DiscoveryRequest> {
        SotwClient::on_response(self, resp)
    }
    fn refused(&mut self, why: &str) -> Option<DiscoveryRequest> {
        SotwClient::refused(self, why)
    }
    fn nonce(req: &DiscoveryRequest) -> &str {
        &req.response_nonce
    }
    fn describe(resp: &DiscoveryResponse) -> String {
        format!(
            "{} version {} (nonce {}): {} resource(s)",
            label(&resp.type_url),
            resp.version_info,
            resp.nonce,
            resp.resources.len()
        )
    }
}

impl Protocol for DeltaClient {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    fn on_response(&mut self, resp: DeltaDiscoveryResponse) -> Output<DeltaDiscoveryRequest> {
        DeltaClient::on_response(self, resp)
    }
    fn refused(&mut self, why: &str) -> Option<DeltaDiscoveryRequest> {
        DeltaClient::refused(self, why)
    }
    fn nonce(req: &DeltaDiscoveryRequest) -> &str {
        &req.response_nonce
    }
    fn describe(resp: &DeltaDiscoveryResponse) -> String {
        format!(
            "delta {} (nonce {}): {} resource(s), {} removed",
            label(&resp.type_url),
            resp.nonce,
            resp.resources.len(),
            resp.removed_resources.len() + resp.removed_resource_names.len()
        )
    }
}

fn label(type_url: &str) -> &str {
    match Kind::from_type_url(type_url) {
        Some(kind) => kind.label(),
        None => type_url,
    }
}

/// Why [`drive`] stopped: a gRPC status (and whether a response had arrived before it), or
/// another failure.
enum Drive {
    Status(tonic::Status, bool),
    Other(StreamError),
}

impl Drive {
    fn into_error(self) -> StreamError {
        match self {
            Drive::Status(s, got_response) => err(format!("stream error: {s}"), got_response),
            Drive::Other(e) => e,
        }
    }
}

/// Reads responses until the stream ends, judging and applying them in batches and sending
/// the ACKs/NACKs.
async fn drive<P: Protocol>(
    client: &mut P,
    sink: &Arc<dyn XdsSink>,
    tx: mpsc::Sender<P::Request>,
    mut inbound: Streaming<P::Response>,
) -> Result<bool, Drive> {
    let mut got_response = false;
    loop {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(got_response),
            Err(s) => return Err(Drive::Status(s, got_response)),
        };
        got_response = true;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            // Zero timeout polls once: only what is already buffered.
            match tokio::time::timeout(Duration::ZERO, inbound.message()).await {
                Ok(Ok(Some(r))) => batch.push(r),
                _ => break,
            }
        }
        let requests = handle_batch(client, sink, batch).await;
        for r in requests {
            if tx.send(r).await.is_err() {
                return Err(Drive::Other(err(
                    "request stream closed".into(),
                    got_response,
                )));
            }
        }
    }
}

/// Judges each response, applies the coalesced updates once, and returns the ACKs/NACKs.
async fn handle_batch<P: Protocol>(
    client: &mut P,
    sink: &Arc<dyn XdsSink>,
    batch: Vec<P::Response>,
) -> Vec<P::Request> {
    let started = std::time::Instant::now();
    let responses = batch.len();
    let mut requests = Vec::with_capacity(batch.len());
    let mut updates: Vec<Update> = Vec::new();
    for resp in batch {
        log::debug!("xDS: {}", P::describe(&resp));
        let out = client.on_response(resp);
        requests.extend(out.requests);
        match out.update {
            // A whole config is the state after everything before it.
            Some(Update::Config(c)) => {
                updates.clear();
                updates.push(Update::Config(c));
            }
            Some(u) => updates.push(u),
            None => {}
        }
    }
    let judged = started.elapsed();
    if updates.is_empty() {
        log::debug!("xDS: {responses} response(s) judged in {judged:?}; nothing to apply");
        return requests;
    }
    let sink = sink.clone();
    let applied = tokio::task::spawn_blocking(move || apply(&*sink, updates)).await;
    log::debug!(
        "xDS: {responses} response(s) judged in {judged:?}, applied in {:?}",
        started.elapsed() - judged
    );
    let failure = match applied {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(e) => Some(format!("apply task failed: {e}")),
    };
    if let Some(why) = failure {
        log::error!("xDS: update not applied: {why}");
        if let Some(nack) = client.refused(&why) {
            // The NACK replaces the ACK of the response that carried the update.
            requests.retain(|r| P::nonce(r) != P::nonce(&nack));
            requests.push(nack);
        }
    }
    requests
}

/// Applies updates in order (compiling a large config is CPU work: off the async threads).
fn apply(sink: &dyn XdsSink, updates: Vec<Update>) -> Result<(), String> {
    for u in updates {
        match u {
            Update::Config(cfg) => {
                let g = sink.apply(*cfg)?;
                log::info!("xDS: config applied as generation {g}");
            }
            Update::Endpoints(list) => {
                for (ns, name, eps) in list {
                    sink.set_endpoints(&ns, &name, &eps)
                        .map_err(|e| format!("endpoints of {ns}/{name}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}
