//! The ADS client as a sans-io state machine: responses in, ACK/NACK requests and config
//! updates out. No sockets, no clock: [`super::task`] does the I/O, tests feed responses.
//!
//! Semantics (state of the world, wildcard subscriptions):
//! - A Cluster or Listener response carries the whole set (missing ones are removed); Route and
//!   ClusterLoadAssignment responses may carry only what changed (the xDS rule for those
//!   types), so they are merged by name; a CLA whose cluster is gone is simply not used.
//! - A rejected response is NACKed with version_info of the last good response of that
//!   type, the response's nonce and error_detail INVALID_ARGUMENT with the resource, the
//!   field and the problem; the last good state stays.
//! - What is accepted, held back and handed out is the shared `state` rule set
//!   (the delta client, [`super::delta_client`], judges by the same rules).

use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

pub use super::state::Update;
use super::state::{self, decode, nack_status, not_subscribed, Removed, Store};
use super::Kind;

/// The requests to send (the ACK or NACK of the response) and the update to apply.
pub type Output = state::Output<DiscoveryRequest>;

/// How to take back the last response when the proxy refuses its update.
#[derive(Debug)]
struct Last {
    kind: Kind,
    prev_version: String,
    nonce: String,
}

/// The ADS client state machine of one proxy; it outlives streams (a re-dialled stream
/// starts from the versions it has).
#[derive(Debug)]
pub struct SotwClient {
    store: Store,
    /// version_info of the last ACKed response, by `Kind as usize`.
    versions: [String; 4],
    last: Option<Last>,
}

impl SotwClient {
    pub fn new(node_id: impl Into<String>) -> SotwClient {
        SotwClient::from_store(Store::new(node_id.into()))
    }

    fn from_store(store: Store) -> SotwClient {
        SotwClient {
            store,
            versions: Default::default(),
            last: None,
        }
    }

    /// The first requests of a stream: a wildcard subscription to each type, with the
    /// versions already held (so a server may skip what did not change).
    pub fn initial_requests(&self) -> Vec<DiscoveryRequest> {
        Kind::ALL
            .into_iter()
            .map(|kind| DiscoveryRequest {
                version_info: self.versions[kind as usize].clone(),
                node: Some(self.store.node.clone()),
                type_url: kind.type_url().into(),
                ..Default::default()
            })
            .collect()
    }

    /// Whether a complete config has been handed out.
    pub fn synced(&self) -> bool {
        self.store.synced()
    }

    /// Judges one response: the ACK and the update, or a NACK and nothing.
    pub fn on_response(&mut self, resp: DiscoveryResponse) -> Output {
        self.last = None;
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            let msg = not_subscribed(&resp.type_url);
            return self.nack_output(&resp.type_url, String::new(), &resp.nonce, msg);
        };
        // Cluster and Listener responses are the whole set (the xDS rule for CDS and LDS).
        // So are Route responses: the client subscribes to every RouteConfiguration
        // (wildcard), which a server answers with all it has (go-control-plane does; so does
        // weir control), and one per service or ingress can only be removed that way.
        // ClusterLoadAssignment responses may carry only what changed, merged by name.
        let removed = match kind {
            Kind::Cluster | Kind::Listener | Kind::Routes => Removed::AllOthers,
            Kind::Endpoints => Removed::Names(&[]),
        };
        let judged = decode(kind, &resp.resources).and_then(|d| self.store.judge(d, removed));
        match judged {
            Ok(update) => {
                let prev_version =
                    std::mem::replace(&mut self.versions[kind as usize], resp.version_info.clone());
                self.last = Some(Last {
                    kind,
                    prev_version,
                    nonce: resp.nonce.clone(),
                });
                Output {
                    requests: vec![DiscoveryRequest {
                        version_info: resp.version_info,
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        ..Default::default()
                    }],
                    update,
                }
            }
            Err(msg) => {
                let version = self.versions[kind as usize].clone();
                self.nack_output(&resp.type_url, version, &resp.nonce, msg)
            }
        }
    }

    /// The proxy refused the update of the last response (e.g. an endpoint name that does
    /// not resolve): the NACK to send instead of its ACK. The client goes back to the
    /// config the proxy still has; the resources stay, so the next change retries them.
    pub fn refused(&mut self, why: &str) -> Option<DiscoveryRequest> {
        let last = self.last.take()?;
        self.store.roll_back();
        let rejected = std::mem::replace(
            &mut self.versions[last.kind as usize],
            last.prev_version.clone(),
        );
        let msg = format!("version {rejected}: not applied: {why}");
        log::warn!("xDS: NACK {} {msg}", last.kind.label());
        Some(nack(
            last.kind.type_url(),
            last.prev_version,
            &last.nonce,
            msg,
        ))
    }

    fn nack_output(&mut self, type_url: &str, version: String, nonce: &str, msg: String) -> Output {
        log::warn!("xDS: NACK {type_url} (nonce {nonce}): {msg}");
        Output {
            requests: vec![nack(type_url, version, nonce, msg)],
            update: None,
        }
    }

    pub(super) fn into_store(self) -> Store {
        self.store
    }
}

/// A state-of-the-world client with what a delta client held: versions restart empty, so a
/// server sends everything again (and the whole cluster set replaces the held one).
impl From<super::DeltaClient> for SotwClient {
    fn from(delta: super::DeltaClient) -> SotwClient {
        SotwClient::from_store(delta.into_store())
    }
}

fn nack(type_url: &str, version: String, nonce: &str, message: String) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version,
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: Some(nack_status(message)),
        ..Default::default()
    }
}

#[cfg(test)]
pub(super) mod tests;
