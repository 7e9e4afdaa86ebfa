//! The ADS client as a sans-io state machine: responses in, ACK/NACK requests and config
//! updates out. No sockets, no clock: [`super::task`] does the I/O, tests feed responses.
//!
//! Semantics (state of the world, wildcard subscriptions):
//! - A Cluster response carries the whole set (missing clusters are removed); Route and
//!   ClusterLoadAssignment responses may carry only what changed (the xDS rule for those
//!   types), so they are merged by name; a CLA whose cluster is gone is simply not used.
//! - Each resource is translated on arrival; any problem NACKs the response (version_info of
//!   the last good response of that type, the response's nonce, error_detail INVALID_ARGUMENT
//!   with the resource, the field and the problem) and the last good state stays.
//! - A route naming a cluster the client does not have is NACKed. A Cluster response that
//!   drops a cluster the routes still use is ACKed but held back until the routes stop
//!   naming it (servers send the route change next); nothing half-done is ever applied.
//! - The first config is emitted once routes and clusters (and endpoints, when a cluster uses
//!   EDS) have arrived. After that, route or cluster changes emit a whole config and
//!   endpoint-only changes emit just the changed endpoints.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use weir_config::Config;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::{node, Node};
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc::Status;

use super::{Kind, INVALID_ARGUMENT};
use crate::translate::from_xds::{self, compose, join_errors, ClusterSpec, RouteSet};
use crate::translate::TranslateError;

/// Longest NACK message sent (the first errors are the useful ones).
const MAX_DETAIL: usize = 4096;

/// What a response changes in the proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A whole new config (ingresses and revisions); boxed, it is large.
    Config(Box<Config>),
    /// Only these revisions' endpoints: (namespace, name, endpoints).
    Endpoints(Vec<(String, String, Vec<String>)>),
}

/// The requests to send (the ACK or NACK of the response) and the update to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub requests: Vec<DiscoveryRequest>,
    pub update: Option<Update>,
}

#[derive(Debug)]
struct TypeState<T> {
    received: bool,
    /// version_info of the last ACKed response.
    version: String,
    items: BTreeMap<String, T>,
}

impl<T> Default for TypeState<T> {
    fn default() -> Self {
        TypeState {
            received: false,
            version: String::new(),
            items: BTreeMap::new(),
        }
    }
}

/// The config last handed out, with what an endpoint update needs to find its revisions.
#[derive(Debug)]
struct Applied {
    config: Config,
    /// CLA name -> indexes into `config.revisions` of the EDS clusters that use it.
    eds: HashMap<String, Vec<usize>>,
}

/// How to take back the last response when the proxy refuses its update.
#[derive(Debug)]
struct Last {
    kind: Kind,
    prev_version: String,
    nonce: String,
    prev_applied: Option<Applied>,
    /// (revision index, endpoints before) of an endpoint-only update.
    prev_endpoints: Vec<(usize, Vec<String>)>,
}

/// The ADS client state machine of one proxy; it outlives streams (a re-dialled stream
/// starts from the versions it has).
#[derive(Debug)]
pub struct AdsClient {
    node: Node,
    routes: TypeState<RouteSet>,
    clusters: TypeState<ClusterSpec>,
    endpoints: TypeState<Vec<String>>,
    applied: Option<Applied>,
    last: Option<Last>,
}

impl AdsClient {
    pub fn new(node_id: impl Into<String>) -> AdsClient {
        AdsClient {
            node: Node {
                id: node_id.into(),
                user_agent_name: "weir".into(),
                user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").into(),
                )),
                ..Default::default()
            },
            routes: TypeState::default(),
            clusters: TypeState::default(),
            endpoints: TypeState::default(),
            applied: None,
            last: None,
        }
    }

    /// The first requests of a stream: a wildcard subscription to each type, with the
    /// versions already held (so a server may skip what did not change).
    pub fn initial_requests(&self) -> Vec<DiscoveryRequest> {
        Kind::ALL
            .into_iter()
            .map(|kind| DiscoveryRequest {
                version_info: self.version(kind).to_string(),
                node: Some(self.node.clone()),
                type_url: kind.type_url().into(),
                ..Default::default()
            })
            .collect()
    }

    /// Whether a complete config has been handed out.
    pub fn synced(&self) -> bool {
        self.applied.is_some()
    }

    fn version(&self, kind: Kind) -> &str {
        match kind {
            Kind::Routes => &self.routes.version,
            Kind::Cluster => &self.clusters.version,
            Kind::Endpoints => &self.endpoints.version,
        }
    }

    fn version_mut(&mut self, kind: Kind) -> &mut String {
        match kind {
            Kind::Routes => &mut self.routes.version,
            Kind::Cluster => &mut self.clusters.version,
            Kind::Endpoints => &mut self.endpoints.version,
        }
    }

    /// Judges one response: the ACK and the update, or a NACK and nothing.
    pub fn on_response(&mut self, resp: DiscoveryResponse) -> Output {
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            let msg = format!(
                "type {:?} is not subscribed (Weir reads Cluster, ClusterLoadAssignment and RouteConfiguration)",
                resp.type_url
            );
            return self.nack_output(&resp.type_url, String::new(), &resp.nonce, msg);
        };
        self.last = None;
        let result = match kind {
            Kind::Routes => self.on_routes(&resp),
            Kind::Cluster => self.on_clusters(&resp),
            Kind::Endpoints => self.on_endpoints(&resp),
        };
        match result {
            Ok((update, last)) => {
                let prev_version =
                    std::mem::replace(self.version_mut(kind), resp.version_info.clone());
                self.last = Some(Last {
                    kind,
                    prev_version,
                    nonce: resp.nonce.clone(),
                    prev_applied: last.0,
                    prev_endpoints: last.1,
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
                let version = self.version(kind).to_string();
                self.nack_output(&resp.type_url, version, &resp.nonce, msg)
            }
        }
    }

    /// The proxy refused the update of the last response (e.g. an endpoint name that does
    /// not resolve): the NACK to send instead of its ACK. The client goes back to the
    /// config the proxy still has; the resources stay, so the next change retries them.
    pub fn refused(&mut self, why: &str) -> Option<DiscoveryRequest> {
        let last = self.last.take()?;
        let rejected = std::mem::replace(self.version_mut(last.kind), last.prev_version.clone());
        if let Some(prev) = last.prev_applied {
            self.applied = Some(prev);
        } else if let Some(applied) = &mut self.applied {
            for (i, eps) in last.prev_endpoints {
                applied.config.revisions[i].endpoints = eps;
            }
        }
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

    // === per type ===

    fn on_routes(&mut self, resp: &DiscoveryResponse) -> Judged {
        let sets = decode_all::<RouteConfiguration, _>(Kind::Routes, &resp.resources, |rc| {
            Ok((rc.name.clone(), from_xds::route_set(rc)?))
        })?;
        if self.clusters.received {
            let missing: Vec<TranslateError> = sets
                .iter()
                .flat_map(|(name, set)| {
                    set.vhosts.iter().flat_map(move |vh| {
                        vh.clusters.iter().map(move |(c, field)| (name, c, field))
                    })
                })
                .filter(|(_, c, _)| !self.clusters.items.contains_key(*c))
                .map(|(name, c, field)| {
                    TranslateError::new(
                        format!("RouteConfiguration {name:?}"),
                        field.clone(),
                        format!("cluster {c:?} is not among the Clusters received"),
                    )
                })
                .collect();
            if !missing.is_empty() {
                return Err(detail(&missing));
            }
        }
        let undo = merge(&mut self.routes.items, sets);
        let was_received = std::mem::replace(&mut self.routes.received, true);
        match self.recompose(Kind::Routes) {
            Ok(r) => Ok(r),
            Err(e) => {
                unmerge(&mut self.routes.items, undo);
                self.routes.received = was_received;
                Err(e)
            }
        }
    }

    fn on_clusters(&mut self, resp: &DiscoveryResponse) -> Judged {
        let specs = decode_all::<Cluster, _>(Kind::Cluster, &resp.resources, |c| {
            Ok((c.name.clone(), from_xds::cluster_spec(c)?))
        })?;
        let old = std::mem::replace(&mut self.clusters.items, specs.into_iter().collect());
        let was_received = std::mem::replace(&mut self.clusters.received, true);
        if self.applied.is_some() && !self.routed_cluster_changed(&old) {
            // Only clusters no route names were added, changed or removed: nothing routed
            // changes, so skip composing and validating the whole config again (the usual
            // case: new clusters arrive ahead of the routes that will name them).
            return Ok((None, (None, Vec::new())));
        }
        match self.recompose(Kind::Cluster) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.clusters.items = old;
                self.clusters.received = was_received;
                Err(e)
            }
        }
    }

    fn on_endpoints(&mut self, resp: &DiscoveryResponse) -> Judged {
        let clas =
            decode_all::<ClusterLoadAssignment, _>(Kind::Endpoints, &resp.resources, |cla| {
                Ok((cla.cluster_name.clone(), from_xds::endpoints(cla)?))
            })?;
        let was_received = std::mem::replace(&mut self.endpoints.received, true);
        let Some(applied) = &mut self.applied else {
            // Before the first sync: these may be what completes it.
            let undo = merge(&mut self.endpoints.items, clas);
            return match self.recompose(Kind::Endpoints) {
                Ok(r) => Ok(r),
                Err(e) => {
                    unmerge(&mut self.endpoints.items, undo);
                    self.endpoints.received = was_received;
                    Err(e)
                }
            };
        };
        // Endpoint-only: routes and clusters are untouched, so no recompile is needed.
        let mut changed = Vec::new();
        let mut before = Vec::new();
        for (name, eps) in &clas {
            for &i in applied.eds.get(name).into_iter().flatten() {
                let rev = &mut applied.config.revisions[i];
                if rev.endpoints != *eps {
                    before.push((i, std::mem::replace(&mut rev.endpoints, eps.clone())));
                    changed.push((rev.namespace.clone(), rev.name.clone(), eps.clone()));
                }
            }
        }
        merge(&mut self.endpoints.items, clas);
        let update = (!changed.is_empty()).then_some(Update::Endpoints(changed));
        Ok((update, (None, before)))
    }

    /// Whether a cluster that some route names differs between `old` and the current set.
    fn routed_cluster_changed(&self, old: &BTreeMap<String, ClusterSpec>) -> bool {
        self.routes
            .items
            .values()
            .flat_map(|set| set.vhosts.iter())
            .flat_map(|vh| vh.clusters.iter())
            .any(|(c, _)| old.get(c) != self.clusters.items.get(c))
    }

    /// Composes the accepted sets after a `kind` response; `Ok(None)` when not complete yet
    /// or unchanged.
    fn recompose(&mut self, kind: Kind) -> Judged {
        let eds_needed = self.clusters.items.values().any(|c| c.eds_name.is_some());
        if !(self.routes.received
            && self.clusters.received
            && (self.endpoints.received || !eds_needed))
        {
            log::info!(
                "xDS: {} accepted; waiting for the rest of the first sync",
                kind.label()
            );
            return Ok((None, (None, Vec::new())));
        }
        let composed = match compose(
            &self.routes.items,
            &self.clusters.items,
            &self.endpoints.items,
        ) {
            Ok(c) => c,
            Err(missing) => {
                // Routes are checked on arrival, so this is a Cluster (or CLA) response that
                // dropped clusters still routed to: hold it until the routes follow.
                log::warn!(
                    "xDS: {} accepted but not applied until the routes stop naming missing clusters: {}",
                    kind.label(),
                    join_errors(&missing, 3)
                );
                return Ok((None, (None, Vec::new())));
            }
        };
        composed.check().map_err(|errs| detail(&errs))?;
        if self
            .applied
            .as_ref()
            .is_some_and(|a| a.config == composed.config)
        {
            return Ok((None, (None, Vec::new())));
        }
        let mut eds: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, cluster) in composed.clusters.iter().enumerate() {
            if let Some(e) = self
                .clusters
                .items
                .get(cluster)
                .and_then(|c| c.eds_name.as_ref())
            {
                eds.entry(e.clone()).or_default().push(i);
            }
        }
        let prev = self.applied.replace(Applied {
            config: composed.config.clone(),
            eds,
        });
        Ok((
            Some(Update::Config(Box::new(composed.config))),
            (prev, Vec::new()),
        ))
    }
}

/// The update of an accepted response, and what [`AdsClient::refused`] needs to undo it.
type Judged = Result<(Option<Update>, (Option<Applied>, Vec<(usize, Vec<String>)>)), String>;

fn nack(type_url: &str, version: String, nonce: &str, mut message: String) -> DiscoveryRequest {
    if message.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" ...");
    }
    DiscoveryRequest {
        version_info: version,
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: Some(Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

fn detail(errs: &[TranslateError]) -> String {
    join_errors(errs, 10)
}

/// Decodes and translates every resource of a response; names must be unique.
fn decode_all<M: Message + Default, T>(
    kind: Kind,
    resources: &[Any],
    translate: impl Fn(&M) -> Result<(String, T), TranslateError>,
) -> Result<Vec<(String, T)>, String> {
    let mut out: Vec<(String, T)> = Vec::with_capacity(resources.len());
    let mut seen = std::collections::HashSet::with_capacity(resources.len());
    for (i, any) in resources.iter().enumerate() {
        if any.type_url != kind.type_url() {
            return Err(format!(
                "{} response: resources[{i}] is a {:?}",
                kind.label(),
                any.type_url
            ));
        }
        let msg = M::decode(any.value.as_slice()).map_err(|e| {
            format!(
                "{} response: resources[{i}]: cannot decode: {e}",
                kind.label()
            )
        })?;
        let (name, t) = translate(&msg).map_err(|e| e.to_string())?;
        if !seen.insert(name.clone()) {
            return Err(format!(
                "{} {name:?}: listed twice in one response",
                kind.label()
            ));
        }
        out.push((name, t));
    }
    Ok(out)
}

/// Inserts `new` into `map`; returns what to put back to undo it.
fn merge<T>(map: &mut BTreeMap<String, T>, new: Vec<(String, T)>) -> Vec<(String, Option<T>)> {
    new.into_iter()
        .map(|(k, v)| {
            let old = map.insert(k.clone(), v);
            (k, old)
        })
        .collect()
}

fn unmerge<T>(map: &mut BTreeMap<String, T>, undo: Vec<(String, Option<T>)>) {
    for (k, old) in undo.into_iter().rev() {
        match old {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
