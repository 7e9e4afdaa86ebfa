//! What the streams serve: every resource of the store's generation, translated and encoded
//! once (not per stream), and the hub that keeps it up to date.
//!
//! Each object has its own resources: a service or an ingress one RouteConfiguration per
//! listener visibility it has hosts on, a revision its Cluster and ClusterLoadAssignment.
//! A generation that changed some objects is translated for those objects only, and the new
//! snapshot shares every other resource with the last one (a [`ShardedMap`] per type), so
//! a route change at 100,000 services is one or two resources translated and one or two
//! sent. Only a settings change (domain, templates, hold timeout...) translates everything.
//!
//! A resource whose encoding did not change keeps its `Arc` (streams compare pointers) and
//! its version, a hash of its bytes: the same resource has the same version across streams
//! and restarts of `weir control`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use weir_config::model::Visibility;
use weir_config::sharded::ShardedMap;
use weir_config::{Change, Config, Key, Kind as ObjectKind};
use xds_api::pb::google::protobuf::Any;

use super::super::Kind;
use crate::store::{ConfigStore, Generation, Published};
use crate::translate::{
    cluster_name, ingress_routes, object_routes_name, revision_resources, service_routes,
};

/// One encoded resource and its delta version (a hash of the bytes).
#[derive(Debug)]
pub(super) struct Item {
    pub(super) any: Any,
    pub(super) version: String,
}

/// One type's resources, by name, and their version.
#[derive(Debug, Clone, Default)]
pub(super) struct TypeSet {
    pub(super) version: String,
    pub(super) items: ShardedMap<String, Arc<Item>>,
}

/// What changed in one type between a snapshot and the one it was built from.
#[derive(Debug, Default)]
pub(super) struct Diff {
    /// Names added or replaced.
    pub(super) changed: Vec<String>,
    /// Names gone.
    pub(super) removed: Vec<String>,
}

/// Everything the streams serve, indexed by `Kind as usize`.
#[derive(Debug, Clone, Default)]
pub(super) struct XdsSnapshot {
    pub(super) types: [TypeSet; 4],
    /// Unique per snapshot (0: the empty one before the first).
    pub(super) id: u64,
    /// The snapshot this one was built from, and per type what changed since it: a delta
    /// stream that pushed exactly `base` looks only at those names instead of comparing all
    /// 20,000 resources of a 10,000-service config.
    pub(super) base: u64,
    pub(super) diffs: [Arc<Diff>; 4],
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

/// The delta version of encoded bytes: FNV-1a, 64 bits, in hex. Stable across processes
/// and builds (unlike std's hasher), so a proxy that re-dials a restarted `weir control`
/// is not sent what it already has.
pub(super) fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(super) fn same(a: &Arc<Item>, b: &Arc<Item>) -> bool {
    Arc::ptr_eq(a, b) || a.any.value == b.any.value
}

/// `m` encoded, or `old` if `m` equals what `old` holds (then `false`: unchanged).
///
/// Equal is compared on the messages, not only the bytes: prost encodes protobuf maps
/// (metadata `Struct`s) in `HashMap` order, which differs between two equal messages, so
/// equal bytes would miss some unchanged resources and send them (with a new delta
/// version) again. Reordered maps keep the encoded length, so only same-length resources
/// with different bytes are decoded to compare.
fn item_for<M: prost::Name + Default + PartialEq>(
    m: &M,
    old: Option<&Arc<Item>>,
) -> (Arc<Item>, bool) {
    let fresh = encode(m);
    match old {
        Some(o) if o.any.value == fresh.value => (o.clone(), false),
        Some(o)
            if o.any.value.len() == fresh.value.len()
                && M::decode(o.any.value.as_slice()).is_ok_and(|d| d == *m) =>
        {
            (o.clone(), false)
        }
        _ => {
            let item = Arc::new(Item {
                version: content_version(&fresh.value),
                any: fresh,
            });
            (item, true)
        }
    }
}

/// A snapshot being built from another: the maps to change and what changed.
struct Builder {
    types: [ShardedMap<String, Arc<Item>>; 4],
    diffs: [Diff; 4],
    /// Every name put, when building everything (to find what is gone).
    seen: Option<[HashSet<String>; 4]>,
}

impl Builder {
    fn from(prev: &XdsSnapshot) -> Builder {
        Builder {
            types: [0, 1, 2, 3].map(|i| prev.types[i].items.clone()),
            diffs: Default::default(),
            seen: None,
        }
    }

    fn put<M: prost::Name + Default + PartialEq>(&mut self, kind: Kind, name: String, m: &M) {
        let k = kind as usize;
        if let Some(seen) = &mut self.seen {
            seen[k].insert(name.clone());
        }
        let (item, changed) = item_for(m, self.types[k].get(&name));
        if changed {
            self.diffs[k].changed.push(name.clone());
            self.types[k].insert(name, item);
        }
    }

    fn remove(&mut self, kind: Kind, name: String) {
        let k = kind as usize;
        if self.types[k].remove(&name).is_some() {
            self.diffs[k].removed.push(name);
        }
    }

    /// Puts object `key`'s resources as `settings` and the objects now say (removing those
    /// it no longer has).
    fn object(&mut self, settings: &Config, kind: ObjectKind, key: &Key, gen: &Generation) {
        let objects = &gen.config.objects;
        match kind {
            ObjectKind::Service | ObjectKind::Ingress => {
                let rcs = match kind {
                    ObjectKind::Service => objects
                        .services
                        .get(key)
                        .map(|s| service_routes(settings, s)),
                    _ => objects.ingresses.get(key).map(|i| ingress_routes(i)),
                };
                let [external, internal] = rcs.unwrap_or_default();
                for (visibility, rc) in [
                    (Visibility::External, external),
                    (Visibility::ClusterLocal, internal),
                ] {
                    let name = object_routes_name(visibility, kind, key);
                    match rc {
                        Some(rc) => self.put(Kind::Routes, name, &rc),
                        None => self.remove(Kind::Routes, name),
                    }
                }
            }
            ObjectKind::Revision => {
                let name = cluster_name(&key.namespace, &key.name);
                match objects.revisions.get(key) {
                    Some(r) => {
                        let (cluster, cla) = revision_resources(settings, r);
                        self.put(Kind::Cluster, name.clone(), &cluster);
                        self.put(Kind::Endpoints, name, &cla);
                    }
                    None => {
                        self.remove(Kind::Cluster, name.clone());
                        self.remove(Kind::Endpoints, name);
                    }
                }
            }
        }
    }

    fn finish(self, generation: u64, prev: &XdsSnapshot) -> XdsSnapshot {
        let mut next = XdsSnapshot {
            id: next_snapshot_id(),
            base: prev.id,
            ..XdsSnapshot::default()
        };
        for (i, (items, diff)) in self.types.into_iter().zip(self.diffs).enumerate() {
            let changed = !diff.changed.is_empty() || !diff.removed.is_empty();
            next.types[i] = TypeSet {
                version: if changed || prev.types[i].version.is_empty() {
                    generation.to_string()
                } else {
                    prev.types[i].version.clone()
                },
                items,
            };
            next.diffs[i] = Arc::new(diff);
        }
        next
    }
}

/// Every resource of `gen`, keeping `prev`'s items (and versions) where they are equal.
pub(super) fn full(gen: &Generation, prev: &XdsSnapshot) -> XdsSnapshot {
    let settings = &gen.config.settings;
    let objects = &gen.config.objects;
    let mut b = Builder::from(prev);
    b.seen = Some(Default::default());
    for (k, _) in objects.services.iter() {
        b.object(settings, ObjectKind::Service, k, gen);
    }
    for (k, _) in objects.ingresses.iter() {
        b.object(settings, ObjectKind::Ingress, k, gen);
    }
    for (k, _) in objects.revisions.iter() {
        b.object(settings, ObjectKind::Revision, k, gen);
    }
    // What `prev` had and no object gave any more is gone.
    let seen = b.seen.take().unwrap_or_default();
    for kind in [Kind::Cluster, Kind::Endpoints, Kind::Routes] {
        let gone: Vec<String> = b.types[kind as usize]
            .iter()
            .filter(|(n, _)| !seen[kind as usize].contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            b.remove(kind, name);
        }
    }
    b.finish(gen.generation, prev)
}

/// `prev` with the resources of the objects `changes` name translated again from `gen`.
pub(super) fn changed(gen: &Generation, prev: &XdsSnapshot, changes: &[Change]) -> XdsSnapshot {
    let mut b = Builder::from(prev);
    for c in changes {
        b.object(&gen.config.settings, c.kind(), c.key(), gen);
    }
    b.finish(gen.generation, prev)
}

/// The first snapshot, built before any stream is served.
pub(super) fn first(store: &ConfigStore) -> XdsSnapshot {
    full(&store.current(), &XdsSnapshot::default())
}

/// Turns the store's generations into snapshots: what each changed, translated off the
/// async threads, bursts coalesced.
pub(super) async fn hub(
    store: Arc<ConfigStore>,
    mut feed: broadcast::Receiver<Published>,
    tx: watch::Sender<Arc<XdsSnapshot>>,
) {
    loop {
        // `None`: changes were missed; translate everything.
        let mut batch: Vec<Option<Published>> = match feed.recv().await {
            Ok(p) => vec![Some(p)],
            Err(broadcast::error::RecvError::Lagged(_)) => vec![None],
            Err(broadcast::error::RecvError::Closed) => return,
        };
        loop {
            match feed.try_recv() {
                Ok(p) => batch.push(Some(p)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => batch.push(None),
                Err(_) => break,
            }
        }
        let whole = batch
            .iter()
            .any(|p| p.as_ref().is_none_or(|p| p.settings_changed));
        let changes: Vec<Change> = batch
            .iter()
            .flatten()
            .flat_map(|p| p.changes.iter().cloned())
            .collect();
        let prev = tx.borrow().clone();
        // The newest generation: a change later in the feed is then translated again, to
        // the same resources, which streams do not send twice.
        let gen = store.current();
        let built = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let snap = if whole {
                full(&gen, &prev)
            } else {
                changed(&gen, &prev, &changes)
            };
            log::debug!(
                "xDS server: generation {} translated in {:?} ({})",
                gen.generation,
                started.elapsed(),
                if whole { "everything" } else { "what changed" }
            );
            snap
        })
        .await;
        match built {
            Ok(s) => {
                tx.send_replace(Arc::new(s));
            }
            Err(e) => log::error!("xDS server: building the snapshot failed: {e}"),
        }
    }
}
