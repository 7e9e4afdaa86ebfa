//! The delta (incremental) ADS client as a sans-io state machine: `DeltaDiscoveryResponse`s
//! in, `DeltaDiscoveryRequest` ACKs/NACKs and the same [`Update`](super::Update)s as the state-of-the-world
//! client out. No sockets, no clock: [`super::task`] does the I/O, tests feed responses.
//!
//! It owns the delta bookkeeping only; what is accepted, held back and handed out is the
//! shared `state::Store`, so both protocols judge resources by the same rules.
//! - Wildcard subscriptions to each type (`resource_names_subscribe` empty), Cluster first,
//!   the node on the first request.
//! - Every resource of every type (clusters too) is added or replaced by name and removed
//!   only by `removed_resources`: a delta response never replaces a whole set.
//! - A rejected response is NACKed with its nonce and error_detail INVALID_ARGUMENT naming
//!   the resource and the problem (the texts of the state-of-the-world client); nothing of
//!   it is applied.
//! - The client keeps each accepted resource's version and sends them as
//!   `initial_resource_versions` when a stream is re-dialled, so a server sends only what
//!   changed meanwhile and removes what is gone.

use std::collections::{BTreeMap, HashMap};

use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::state::{self, decode, nack_status, not_subscribed, Removed, Store};
use super::Kind;

/// The requests to send (the ACK or NACK of the response) and the update to apply.
pub type DeltaOutput = state::Output<DeltaDiscoveryRequest>;

/// How to take back the last response when the proxy refuses its update.
#[derive(Debug)]
struct Last {
    kind: Kind,
    nonce: String,
    system_version: String,
    /// (name, version before) of every resource the response touched.
    prev_versions: Vec<(String, Option<String>)>,
}

/// The delta ADS client state machine of one proxy; it outlives streams.
#[derive(Debug)]
pub struct DeltaClient {
    store: Store,
    /// Resource name -> version of what was accepted, by `Kind as usize`.
    versions: [BTreeMap<String, String>; 4],
    last: Option<Last>,
}

impl DeltaClient {
    pub fn new(node_id: impl Into<String>) -> DeltaClient {
        DeltaClient::from_store(Store::new(node_id.into()))
    }

    fn from_store(store: Store) -> DeltaClient {
        DeltaClient {
            store,
            versions: Default::default(),
            last: None,
        }
    }

    /// The first requests of a stream: a wildcard subscription to each type, with every
    /// resource held and its version (a name held without one, e.g. from a
    /// state-of-the-world stream, goes with an empty version, so the server sends it again
    /// or says it is gone).
    pub fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        Kind::ALL
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let held = &self.versions[kind as usize];
                let initial_resource_versions: HashMap<String, String> = self
                    .store
                    .names(kind)
                    .into_iter()
                    .map(|n| (n.to_string(), held.get(n).cloned().unwrap_or_default()))
                    .collect();
                DeltaDiscoveryRequest {
                    // ADS: one stream, so the node once is enough.
                    node: (i == 0).then(|| self.store.node.clone()),
                    type_url: kind.type_url().into(),
                    initial_resource_versions,
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Whether a complete config has been handed out.
    pub fn synced(&self) -> bool {
        self.store.synced()
    }

    /// Judges one response: the ACK and the update, or a NACK and nothing.
    pub fn on_response(&mut self, resp: DeltaDiscoveryResponse) -> DeltaOutput {
        self.last = None;
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            return nack_output(&resp, not_subscribed(&resp.type_url));
        };
        let mut removed = resp.removed_resources.clone();
        removed.extend(resp.removed_resource_names.iter().map(|r| r.name.clone()));
        match self.judge(kind, &resp, &removed) {
            Ok(update) => {
                let versions = &mut self.versions[kind as usize];
                let mut prev_versions = Vec::with_capacity(resp.resources.len() + removed.len());
                for r in &resp.resources {
                    let old = versions.insert(r.name.clone(), r.version.clone());
                    prev_versions.push((r.name.clone(), old));
                }
                for name in removed {
                    let old = versions.remove(&name);
                    prev_versions.push((name, old));
                }
                self.last = Some(Last {
                    kind,
                    nonce: resp.nonce.clone(),
                    system_version: resp.system_version_info.clone(),
                    prev_versions,
                });
                DeltaOutput {
                    requests: vec![DeltaDiscoveryRequest {
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        ..Default::default()
                    }],
                    update,
                }
            }
            Err(msg) => nack_output(&resp, msg),
        }
    }

    fn judge(
        &mut self,
        kind: Kind,
        resp: &DeltaDiscoveryResponse,
        removed: &[String],
    ) -> state::Judged {
        let mut anys = Vec::with_capacity(resp.resources.len());
        for (i, r) in resp.resources.iter().enumerate() {
            let Some(any) = &r.resource else {
                return Err(format!(
                    "{} response: resources[{i}] ({:?}) carries no resource",
                    kind.label(),
                    r.name
                ));
            };
            anys.push(any);
        }
        let decoded = decode(kind, anys)?;
        // Versions are kept by the Resource's name, so it must be the resource's own.
        for (r, name) in resp.resources.iter().zip(decoded.names()) {
            if r.name != name {
                return Err(format!(
                    "{} {name:?}: sent under the name {:?}",
                    kind.label(),
                    r.name
                ));
            }
        }
        self.store.judge(decoded, Removed::Names(removed))
    }

    /// The proxy refused the update of the last response (e.g. an endpoint name that does
    /// not resolve): the NACK to send instead of its ACK. The client goes back to the
    /// config the proxy still has and forgets the response's versions (a re-dialled stream
    /// gets those resources again); the resources stay, so the next change retries them.
    pub fn refused(&mut self, why: &str) -> Option<DeltaDiscoveryRequest> {
        let last = self.last.take()?;
        self.store.roll_back();
        let versions = &mut self.versions[last.kind as usize];
        for (name, old) in last.prev_versions.into_iter().rev() {
            match old {
                Some(v) => versions.insert(name, v),
                None => versions.remove(&name),
            };
        }
        let msg = if last.system_version.is_empty() {
            format!("not applied: {why}")
        } else {
            format!("version {}: not applied: {why}", last.system_version)
        };
        log::warn!("xDS: NACK {} {msg}", last.kind.label());
        Some(nack(last.kind.type_url(), &last.nonce, msg))
    }

    pub(super) fn into_store(self) -> Store {
        self.store
    }

    /// The version held of one resource (for tests and logs).
    pub fn version(&self, kind: Kind, name: &str) -> Option<&str> {
        self.versions[kind as usize].get(name).map(String::as_str)
    }
}

/// A delta client with what a state-of-the-world client held: it has no per-resource
/// versions, so its first requests list every held name with an empty version.
impl From<super::SotwClient> for DeltaClient {
    fn from(sotw: super::SotwClient) -> DeltaClient {
        DeltaClient::from_store(sotw.into_store())
    }
}

fn nack_output(resp: &DeltaDiscoveryResponse, msg: String) -> DeltaOutput {
    log::warn!("xDS: NACK {} (nonce {}): {msg}", resp.type_url, resp.nonce);
    DeltaOutput {
        requests: vec![nack(&resp.type_url, &resp.nonce, msg)],
        update: None,
    }
}

fn nack(type_url: &str, nonce: &str, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: Some(nack_status(message)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
