//! The I/O half of `weir proxy --xds`: one ADS stream over tonic, driving the sans-io
//! [`AdsClient`] and handing its updates to an [`XdsSink`] (the proxy's state).
//!
//! A lost stream is re-dialled with capped exponential backoff and jitter; the proxy keeps
//! serving the last config meanwhile. ACKs are sent after the sink applied the update, so an
//! ACK means "in force", and a sink refusal becomes a NACK.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use weir_config::Config;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::client::{AdsClient, Update};

/// Where updates go. The proxy implements it for its state; this crate does not know it.
pub trait XdsSink: Send + Sync {
    /// Applies a whole config from xDS (ingresses and revisions); the new generation.
    fn apply(&self, cfg: Config) -> Result<u64, String>;
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

/// Runs the ADS client forever: dial, stream, re-dial.
pub async fn run_client(url: String, node_id: String, sink: Arc<dyn XdsSink>) {
    let mut client = AdsClient::new(node_id);
    let mut backoff = BACKOFF_MIN;
    loop {
        match stream_once(&url, &mut client, &sink).await {
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

struct StreamError {
    message: String,
    got_response: bool,
}

/// One stream, until it ends. `Ok(true)`/`got_response`: a response arrived on it (the
/// server is healthy enough to reset the backoff).
async fn stream_once(
    url: &str,
    client: &mut AdsClient,
    sink: &Arc<dyn XdsSink>,
) -> Result<bool, StreamError> {
    let err = |message: String, got_response| StreamError {
        message,
        got_response,
    };
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
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| err(format!("connect: {e}"), false))?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    for r in client.initial_requests() {
        // The receiver is alive (below); the channel has room for these three.
        let _ = tx.try_send(r);
    }
    let mut inbound = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| err(format!("ADS stream refused: {s}"), false))?
        .into_inner();
    log::info!("xDS: stream to {url} established");
    sink.connected(true);
    let mut got_response = false;
    loop {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(got_response),
            Err(s) => return Err(err(format!("stream error: {s}"), got_response)),
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
                return Err(err("request stream closed".into(), got_response));
            }
        }
    }
}

/// Judges each response, applies the coalesced updates once, and returns the ACKs/NACKs.
async fn handle_batch(
    client: &mut AdsClient,
    sink: &Arc<dyn XdsSink>,
    batch: Vec<DiscoveryResponse>,
) -> Vec<DiscoveryRequest> {
    let started = std::time::Instant::now();
    let responses = batch.len();
    let mut requests = Vec::with_capacity(batch.len());
    let mut updates: Vec<Update> = Vec::new();
    for resp in batch {
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
            requests.retain(|r| r.response_nonce != nack.response_nonce);
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
