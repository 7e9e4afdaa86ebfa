//! What the ADS clients hold, whatever the protocol: the accepted resources by name, the
//! config last handed out, and the rules that judge a response against them. The state of
//! the world client ([`super::client`]) and the delta client ([`super::delta_client`]) only
//! add their own bookkeeping (versions, nonces, request shapes) around a [`Store`].
//!
//! - Each resource is translated on arrival ([`decode`]); any problem rejects the whole
//!   response and nothing of it is applied.
//! - A route naming a cluster the store does not have is rejected. A response that drops a
//!   cluster the routes still use is accepted but held back until the routes stop naming it
//!   (servers send the route change next); nothing half-done is ever applied.
//! - The first config is emitted once routes and clusters (and endpoints, when a cluster uses
//!   EDS) have arrived. After that, route or cluster changes emit a whole config and
//!   endpoint-only changes emit just the changed endpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prost::Message;
use weir_config::model::Readiness;
use weir_config::sharded::ShardedMap;
use weir_config::{Change, Config, Key, Objects};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::{node, Node};
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc::Status;

use super::{Kind, INVALID_ARGUMENT};
use crate::translate::from_xds::{
    self, compose, compose_changed, join_errors, listener_settings, recompose_clusters,
    ClusterSpec, Composed, ListenerSettings, ListenerSpec, RouteSet,
};
use crate::translate::TranslateError;

/// Longest NACK message sent (the first errors are the useful ones).
const MAX_DETAIL: usize = 4096;

/// What xDS gives the proxy as a whole: routes and revisions, and what the Listeners say.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// Ingresses and revisions (services never come from xDS), shared with the store.
    pub objects: Objects,
    /// The hosts of status routes.
    pub readiness: Readiness,
    /// `None` while no Listener is held: the proxy keeps its own listener settings.
    pub listeners: Option<ListenerSettings>,
    /// What changed in `objects` since the config handed out before this one; `None` for
    /// the first (or after a refused one), when the proxy compares the whole.
    pub changes: Option<Vec<Change>>,
}

impl XdsConfig {
    /// The routes as a config: ingresses, revisions and readiness hosts.
    pub fn routes(&self) -> Config {
        let mut settings = Config::empty();
        settings.readiness = self.readiness.clone();
        self.objects.to_config(&settings)
    }
}

impl PartialEq for XdsConfig {
    /// The same routes and listener settings (whatever the change list says).
    fn eq(&self, other: &Self) -> bool {
        self.readiness == other.readiness
            && self.listeners == other.listeners
            && self.objects.diff(&other.objects).is_empty()
    }
}

/// What a response changes in the proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A whole new config; boxed, it is large.
    Config(Box<XdsConfig>),
    /// Only these revisions' endpoints: (namespace, name, endpoints).
    Endpoints(Vec<(String, String, Vec<String>)>),
}

/// The requests to send (the ACK or NACK of the response) and the update to apply;
/// `R` is the protocol's request type.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<R> {
    pub requests: Vec<R>,
    pub update: Option<Update>,
}

/// The resources of one response, translated.
#[derive(Debug)]
pub(super) enum Decoded {
    Routes(Vec<(String, RouteSet)>),
    Clusters(Vec<(String, ClusterSpec)>),
    Endpoints(Vec<(String, Vec<String>)>),
    Listeners(Vec<(String, ListenerSpec)>),
}

impl Decoded {
    /// The resource names, in response order.
    pub(super) fn names(&self) -> Vec<&str> {
        fn names<T>(v: &[(String, T)]) -> Vec<&str> {
            v.iter().map(|(n, _)| n.as_str()).collect()
        }
        match self {
            Decoded::Routes(v) => names(v),
            Decoded::Clusters(v) => names(v),
            Decoded::Endpoints(v) => names(v),
            Decoded::Listeners(v) => names(v),
        }
    }
}

/// Which held resources of the response's type a response removes.
#[derive(Clone, Copy)]
pub(super) enum Removed<'a> {
    /// These names (delta's `removed_resources`; none for a SotW route or CLA response).
    Names(&'a [String]),
    /// Every name the response does not carry (a SotW Cluster response is the whole set).
    AllOthers,
}

#[derive(Debug)]
struct TypeState<T> {
    /// Whether a response of this type was accepted (the first sync waits for it).
    received: bool,
    items: BTreeMap<String, T>,
}

impl<T> Default for TypeState<T> {
    fn default() -> Self {
        TypeState {
            received: false,
            items: BTreeMap::new(),
        }
    }
}

/// The config last handed out, with what an endpoint update needs to find its revisions.
#[derive(Debug, Clone)]
struct Applied {
    composed: Composed,
    listeners: Option<ListenerSettings>,
}

/// How to take back the update of the last accepted response (cheap to keep: the maps
/// share everything with the next one's).
#[derive(Debug)]
enum Undo {
    /// The config handed out before it.
    Config(Option<Box<Applied>>),
    /// The revisions before an endpoint-only update.
    Revisions(ShardedMap<Key, Arc<weir_config::model::Revision>>),
}

/// The accepted resources and the config handed out, of one proxy; it outlives streams and
/// the switch between delta and state-of-the-world streams.
#[derive(Debug)]
pub(super) struct Store {
    pub(super) node: Node,
    routes: TypeState<RouteSet>,
    clusters: TypeState<ClusterSpec>,
    endpoints: TypeState<Vec<String>>,
    listeners: TypeState<ListenerSpec>,
    applied: Option<Applied>,
    undo: Option<Undo>,
    /// The proxy refused the last config handed out: the next carries no change list.
    refused: bool,
    /// ClusterLoadAssignment name -> the EDS clusters that take their endpoints from it.
    eds_users: HashMap<String, std::collections::BTreeSet<String>>,
}

/// The update of an accepted response, or the NACK message.
pub(super) type Judged = Result<Option<Update>, String>;

impl Store {
    pub(super) fn new(node_id: String) -> Store {
        Store {
            node: Node {
                id: node_id,
                user_agent_name: "weir".into(),
                user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").into(),
                )),
                ..Default::default()
            },
            routes: TypeState::default(),
            clusters: TypeState::default(),
            endpoints: TypeState::default(),
            listeners: TypeState::default(),
            applied: None,
            undo: None,
            refused: false,
            eds_users: HashMap::new(),
        }
    }

    /// Whether a complete config has been handed out.
    pub(super) fn synced(&self) -> bool {
        self.applied.is_some()
    }

    /// The names held of one type.
    pub(super) fn names(&self, kind: Kind) -> Vec<&str> {
        fn keys<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
            m.keys().map(String::as_str).collect()
        }
        match kind {
            Kind::Routes => keys(&self.routes.items),
            Kind::Cluster => keys(&self.clusters.items),
            Kind::Endpoints => keys(&self.endpoints.items),
            Kind::Listener => keys(&self.listeners.items),
        }
    }

    /// Judges one response's resources (and removals) against the state: the update to
    /// hand out, or the NACK message and no change at all.
    pub(super) fn judge(&mut self, decoded: Decoded, removed: Removed<'_>) -> Judged {
        self.undo = None;
        match decoded {
            Decoded::Routes(sets) => self.on_routes(sets, removed),
            Decoded::Clusters(specs) => self.on_clusters(specs, removed),
            Decoded::Endpoints(clas) => self.on_endpoints(clas, removed),
            Decoded::Listeners(specs) => self.on_listeners(specs, removed),
        }
    }

    /// The proxy refused the update of the last accepted response: back to the config it
    /// still has. The resources stay, so the next change retries them.
    pub(super) fn roll_back(&mut self) {
        match self.undo.take() {
            Some(Undo::Config(prev)) => self.applied = prev.map(|p| *p),
            Some(Undo::Revisions(before)) => {
                if let Some(a) = &mut self.applied {
                    a.composed.objects.revisions = before;
                }
            }
            None => return,
        }
        // The proxy's config is not what the store last handed out: the next one is
        // compared whole.
        self.refused = true;
    }

    fn on_routes(&mut self, sets: Vec<(String, RouteSet)>, removed: Removed<'_>) -> Judged {
        if self.clusters.received {
            let missing: Vec<TranslateError> = sets
                .iter()
                .flat_map(|(name, set)| {
                    set.vhosts
                        .iter()
                        .flat_map(move |vh| vh.clusters.iter().map(move |r| (name, vh, r)))
                })
                .filter(|(_, _, r)| !self.clusters.items.contains_key(&r.cluster))
                .map(|(name, vh, r)| {
                    TranslateError::new(
                        format!("RouteConfiguration {name:?}"),
                        vh.field(r),
                        format!("cluster {:?} is not among the Clusters received", r.cluster),
                    )
                })
                .collect();
            if !missing.is_empty() {
                return Err(detail(&missing));
            }
        }
        let mut sets = sets;
        for (name, set) in &mut sets {
            if let Some(old) = self.routes.items.get(name) {
                set.reuse(old);
            }
        }
        let undo = merge(&mut self.routes.items, sets, removed);
        let was_received = std::mem::replace(&mut self.routes.received, true);
        // What changed (a state-of-the-world response repeats the rest, and its virtual hosts
        // that did not change kept their `Arc`s above).
        let touched: Vec<(String, Option<RouteSet>)> = undo
            .iter()
            .filter(|(name, old)| !same_set(old.as_ref(), self.routes.items.get(name)))
            .cloned()
            .collect();
        let result = match &self.applied {
            // After a refusal the proxy has the config before it: compare everything.
            _ if self.refused => self.recompose(Kind::Routes),
            Some(_) if touched.is_empty() => Ok(None),
            Some(a) => match compose_changed(
                &self.routes.items,
                &self.clusters.items,
                &self.endpoints.items,
                &a.composed,
                &touched,
            ) {
                Some(Ok((composed, changes))) => self.hand_out(composed, changes),
                Some(Err(missing)) => {
                    log::warn!(
                        "xDS: {} accepted but not applied until the routes stop naming missing clusters: {}",
                        Kind::Routes.label(),
                        join_errors(&missing, 3)
                    );
                    Ok(None)
                }
                None => self.recompose(Kind::Routes),
            },
            None => self.recompose(Kind::Routes),
        };
        result.inspect_err(|_| {
            unmerge(&mut self.routes.items, undo);
            self.routes.received = was_received;
        })
    }

    fn on_clusters(&mut self, specs: Vec<(String, ClusterSpec)>, removed: Removed<'_>) -> Judged {
        let undo = merge(&mut self.clusters.items, specs, removed);
        let was_received = std::mem::replace(&mut self.clusters.received, true);
        self.index_eds(&undo);
        let result = match &self.applied {
            _ if self.refused => self.recompose(Kind::Cluster),
            Some(a) => {
                // Only the clusters routes name matter; the others (the usual case: new
                // clusters ahead of the routes that will name them) change nothing routed.
                let touched: Vec<&str> = undo
                    .iter()
                    .filter(|(name, old)| {
                        a.composed.routes_to(name) && old.as_ref() != self.clusters.items.get(name)
                    })
                    .map(|(name, _)| name.as_str())
                    .collect();
                if touched.is_empty() {
                    Ok(None)
                } else {
                    match recompose_clusters(
                        &self.clusters.items,
                        &self.endpoints.items,
                        &a.composed,
                        &touched,
                    ) {
                        Ok((composed, changes)) => self.hand_out(composed, changes),
                        Err(gone) => {
                            // Routes are checked on arrival, so this is a response that
                            // dropped clusters still routed to: hold it until the routes
                            // follow.
                            log::warn!(
                                "xDS: {} accepted but not applied until the routes stop naming missing clusters: {}",
                                Kind::Cluster.label(),
                                gone.join(", ")
                            );
                            Ok(None)
                        }
                    }
                }
            }
            None => self.recompose(Kind::Cluster),
        };
        result.inspect_err(|_| {
            self.clusters.received = was_received;
            let undo_names: Vec<(String, Option<ClusterSpec>)> = undo.clone();
            unmerge(&mut self.clusters.items, undo);
            self.index_eds(&undo_names);
        })
    }

    /// Notes which ClusterLoadAssignment each of the clusters `touched` takes its endpoints
    /// from (as `self.clusters` has them now).
    fn index_eds(&mut self, touched: &[(String, Option<ClusterSpec>)]) {
        for (name, old) in touched {
            if let Some(e) = old.as_ref().and_then(|o| o.eds_name.as_ref()) {
                if let Some(users) = self.eds_users.get_mut(e) {
                    users.remove(name);
                    if users.is_empty() {
                        self.eds_users.remove(e);
                    }
                }
            }
            if let Some(e) = self
                .clusters
                .items
                .get(name)
                .and_then(|c| c.eds_name.clone())
            {
                self.eds_users.entry(e).or_default().insert(name.clone());
            }
        }
    }

    fn on_endpoints(&mut self, clas: Vec<(String, Vec<String>)>, removed: Removed<'_>) -> Judged {
        let was_received = std::mem::replace(&mut self.endpoints.received, true);
        let Some(applied) = &mut self.applied else {
            // Before the first sync: these may be what completes it.
            let undo = merge(&mut self.endpoints.items, clas, removed);
            return self.recompose(Kind::Endpoints).inspect_err(|_| {
                unmerge(&mut self.endpoints.items, undo);
                self.endpoints.received = was_received;
            });
        };
        // Endpoint-only: routes and clusters are untouched, so no recompile is needed. A
        // removed load assignment leaves its EDS clusters without endpoints.
        let gone: &[String] = match removed {
            Removed::Names(names) => names,
            Removed::AllOthers => &[],
        };
        let none = Vec::new();
        let new = clas
            .iter()
            .map(|(name, eps)| (name, eps))
            .chain(gone.iter().map(|name| (name, &none)));
        let before = applied.composed.objects.revisions.clone();
        let mut changed = Vec::new();
        for (name, eps) in new {
            let keys: Vec<Key> = self
                .eds_users
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|c| applied.composed.revision_of(c))
                .collect();
            for key in keys {
                let Some(rev) = applied.composed.objects.revisions.get(&key) else {
                    continue;
                };
                if rev.endpoints != *eps {
                    let mut r = (**rev).clone();
                    r.endpoints = eps.clone();
                    changed.push((r.namespace.clone(), r.name.clone(), eps.clone()));
                    applied.composed.objects.revisions.insert(key, Arc::new(r));
                }
            }
        }
        merge(&mut self.endpoints.items, clas, removed);
        if changed.is_empty() {
            return Ok(None);
        }
        self.undo = Some(Undo::Revisions(before));
        Ok(Some(Update::Endpoints(changed)))
    }

    /// Listeners change certificates and listener settings only: the routes stay.
    fn on_listeners(&mut self, specs: Vec<(String, ListenerSpec)>, removed: Removed<'_>) -> Judged {
        let undo = merge(&mut self.listeners.items, specs, removed);
        let was_received = std::mem::replace(&mut self.listeners.received, true);
        let settings = match listener_settings(&self.listeners.items) {
            Ok(s) => s,
            Err(e) => {
                unmerge(&mut self.listeners.items, undo);
                self.listeners.received = was_received;
                return Err(e.to_string());
            }
        };
        let Some(applied) = &mut self.applied else {
            // Taken with the first complete config.
            return Ok(None);
        };
        if applied.listeners == settings {
            return Ok(None);
        }
        let before = applied.clone();
        applied.listeners = settings.clone();
        let config = XdsConfig {
            objects: applied.composed.objects.clone(),
            readiness: applied.composed.readiness.clone(),
            listeners: settings,
            changes: (!self.refused).then(Vec::new),
        };
        self.refused = false;
        self.undo = Some(Undo::Config(Some(Box::new(before))));
        Ok(Some(Update::Config(Box::new(config))))
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
            return Ok(None);
        }
        let empty = Composed::default();
        let prev = self.applied.as_ref().map_or(&empty, |a| &a.composed);
        let composed = match compose(
            &self.routes.items,
            &self.clusters.items,
            &self.endpoints.items,
            prev,
        ) {
            Ok(c) => c,
            Err(missing) => {
                // Routes are checked on arrival, so this is a response that dropped clusters
                // still routed to: hold it until the routes follow.
                log::warn!(
                    "xDS: {} accepted but not applied until the routes stop naming missing clusters: {}",
                    kind.label(),
                    join_errors(&missing, 3)
                );
                return Ok(None);
            }
        };
        let changes = prev.objects.diff(&composed.objects);
        self.hand_out(composed, changes)
    }

    /// Hands out `composed`, which differs from what was handed out last by `changes`: only
    /// those are checked (and compiled by the proxy), an unchanged object was checked when it
    /// came. `Ok(None)` when nothing changed.
    fn hand_out(&mut self, composed: Composed, changes: Vec<Change>) -> Judged {
        composed.check(&changes).map_err(|errs| detail(&errs))?;
        let listeners = listener_settings(&self.listeners.items).map_err(|e| e.to_string())?;
        if self.applied.as_ref().is_some_and(|a| {
            changes.is_empty()
                && a.composed.readiness == composed.readiness
                && a.listeners == listeners
        }) {
            return Ok(None);
        }
        let first = self.applied.is_none();
        let config = XdsConfig {
            objects: composed.objects.clone(),
            readiness: composed.readiness.clone(),
            listeners: listeners.clone(),
            changes: (!first && !self.refused).then_some(changes),
        };
        self.refused = false;
        let prev = self.applied.replace(Applied {
            composed,
            listeners,
        });
        self.undo = Some(Undo::Config(prev.map(Box::new)));
        Ok(Some(Update::Config(Box::new(config))))
    }
}

/// Whether a RouteConfiguration is what it was: the same virtual hosts (`Arc`s kept by
/// [`RouteSet::reuse`] when equal), visibility and kind.
fn same_set(old: Option<&RouteSet>, new: Option<&RouteSet>) -> bool {
    match (old, new) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.visibility == b.visibility
                && a.tls == b.tls
                && a.vhosts.len() == b.vhosts.len()
                && a.vhosts
                    .iter()
                    .zip(&b.vhosts)
                    .all(|(x, y)| Arc::ptr_eq(x, y))
        }
        _ => false,
    }
}

/// The `error_detail` of a NACK: INVALID_ARGUMENT with the message, cut at [`MAX_DETAIL`].
pub(super) fn nack_status(mut message: String) -> Status {
    if message.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" ...");
    }
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

fn detail(errs: &[TranslateError]) -> String {
    join_errors(errs, 10)
}

/// The message of a response whose type Weir does not read.
pub(super) fn not_subscribed(type_url: &str) -> String {
    format!(
        "type {type_url:?} is not subscribed (Weir reads Cluster, ClusterLoadAssignment, Listener and RouteConfiguration)"
    )
}

/// Decodes and translates every resource of a `kind` response; names must be unique.
pub(super) fn decode<'a>(
    kind: Kind,
    resources: impl IntoIterator<Item = &'a Any>,
) -> Result<Decoded, String> {
    Ok(match kind {
        Kind::Routes => Decoded::Routes(decode_all::<RouteConfiguration, _>(
            kind,
            resources,
            |rc| Ok(Some((rc.name.clone(), from_xds::route_set(rc)?))),
        )?),
        // Clusters that are not revisions are dropped here: no route can name them.
        Kind::Cluster => Decoded::Clusters(decode_all::<Cluster, _>(kind, resources, |c| {
            Ok(from_xds::cluster_spec(c)?.map(|s| (c.name.clone(), s)))
        })?),
        Kind::Endpoints => Decoded::Endpoints(decode_all::<ClusterLoadAssignment, _>(
            kind,
            resources,
            |cla| Ok(Some((cla.cluster_name.clone(), from_xds::endpoints(cla)?))),
        )?),
        Kind::Listener => Decoded::Listeners(decode_all::<Listener, _>(kind, resources, |l| {
            Ok(Some((l.name.clone(), from_xds::listener_spec(l)?)))
        })?),
    })
}

fn decode_all<'a, M: Message + Default, T>(
    kind: Kind,
    resources: impl IntoIterator<Item = &'a Any>,
    translate: impl Fn(&M) -> Result<Option<(String, T)>, TranslateError>,
) -> Result<Vec<(String, T)>, String> {
    let mut out: Vec<(String, T)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, any) in resources.into_iter().enumerate() {
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
        let Some((name, t)) = translate(&msg).map_err(|e| e.to_string())? else {
            continue;
        };
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

/// Inserts `new` into `map` and takes out `removed`; returns what to put back to undo it.
fn merge<T>(
    map: &mut BTreeMap<String, T>,
    new: Vec<(String, T)>,
    removed: Removed<'_>,
) -> Vec<(String, Option<T>)> {
    let gone: Vec<String> = match removed {
        Removed::Names(names) => names.to_vec(),
        Removed::AllOthers => {
            let kept: HashSet<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
            map.keys()
                .filter(|k| !kept.contains(k.as_str()))
                .cloned()
                .collect()
        }
    };
    let mut undo: Vec<(String, Option<T>)> = new
        .into_iter()
        .map(|(k, v)| {
            let old = map.insert(k.clone(), v);
            (k, old)
        })
        .collect();
    for k in gone {
        if let Some(old) = map.remove(&k) {
            undo.push((k, Some(old)));
        }
    }
    undo
}

fn unmerge<T>(map: &mut BTreeMap<String, T>, undo: Vec<(String, Option<T>)>) {
    for (k, old) in undo.into_iter().rev() {
        match old {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}
