//! A config as objects by key, and changes to them: what makes an update cost what it
//! changes. A config is its *settings* (everything but the three lists) and its services,
//! ingresses and revisions, each by `(namespace, name)` in a [`ShardedMap`]. An update is a
//! settings replacement and/or a list of [`Change`]s; a whole new config is turned into the
//! changes that lead to it ([`Objects::diff`]), in the manner of sozu's `ConfigState::diff`.

use std::fmt;
use std::sync::Arc;

use crate::model::{Config, Ingress, Revision, Service};
use crate::sharded::ShardedMap;

/// `(namespace, name)` of a service, an ingress or a revision.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The three kinds of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Ingress,
    Revision,
}

impl Kind {
    /// As the config and the API name the list: `services`, `ingresses`, `revisions`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Ingress => "ingresses",
            Kind::Revision => "revisions",
        }
    }
}

/// One change to the objects: an object put (added or replaced) or deleted.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Service(Key, Option<Arc<Service>>),
    Ingress(Key, Option<Arc<Ingress>>),
    Revision(Key, Option<Arc<Revision>>),
}

impl Change {
    pub fn kind(&self) -> Kind {
        match self {
            Change::Service(..) => Kind::Service,
            Change::Ingress(..) => Kind::Ingress,
            Change::Revision(..) => Kind::Revision,
        }
    }

    pub fn key(&self) -> &Key {
        match self {
            Change::Service(k, _) | Change::Ingress(k, _) | Change::Revision(k, _) => k,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Change::Service(_, None) | Change::Ingress(_, None) | Change::Revision(_, None)
        )
    }
}

/// `changes` with only the last change of each object (what the objects end up with), in
/// the order of those last changes.
pub fn last_changes(changes: &[Change]) -> Vec<&Change> {
    let mut seen = std::collections::HashSet::with_capacity(changes.len());
    let mut out: Vec<&Change> = changes
        .iter()
        .rev()
        .filter(|c| seen.insert((c.kind(), c.key())))
        .collect();
    out.reverse();
    out
}

/// The services, ingresses and revisions of a config, by key.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: ShardedMap<Key, Arc<Service>>,
    pub ingresses: ShardedMap<Key, Arc<Ingress>>,
    pub revisions: ShardedMap<Key, Arc<Revision>>,
}

/// A config's settings: the config without its services, ingresses and revisions.
pub fn settings_of(mut cfg: Config) -> (Config, Vec<Service>, Vec<Ingress>, Vec<Revision>) {
    let services = std::mem::take(&mut cfg.services);
    let ingresses = std::mem::take(&mut cfg.ingresses);
    let revisions = std::mem::take(&mut cfg.revisions);
    (cfg, services, ingresses, revisions)
}

/// The path errors about an object name it by: `services[default/hello]`.
pub fn path_of(kind: Kind, key: &Key) -> String {
    format!("{}[{key}]", kind.plural())
}

impl Objects {
    /// The objects of a config (copied).
    pub fn from_config(cfg: &Config) -> Objects {
        Objects::new(
            cfg.services.clone(),
            cfg.ingresses.clone(),
            cfg.revisions.clone(),
        )
    }

    /// A service or ingress that sends to revision `rev` (scans every one: for error
    /// messages only).
    pub fn users_of(&self, rev: &Key) -> Option<(Kind, Key)> {
        let svc = self.services.iter().find(|(_, s)| {
            *s.namespace == *rev.namespace && s.traffic.iter().any(|t| *t.revision == *rev.name)
        });
        if let Some((k, _)) = svc {
            return Some((Kind::Service, k.clone()));
        }
        self.ingresses
            .iter()
            .find(|(_, i)| {
                i.rules
                    .iter()
                    .flat_map(|r| r.paths.iter())
                    .flat_map(|p| &p.splits)
                    .any(|s| {
                        *s.revision == *rev.name
                            && s.namespace.as_deref().unwrap_or(&i.namespace) == &*rev.namespace
                    })
            })
            .map(|(k, _)| (Kind::Ingress, k.clone()))
    }

    pub fn new(services: Vec<Service>, ingresses: Vec<Ingress>, revisions: Vec<Revision>) -> Self {
        Objects {
            services: services
                .into_iter()
                .map(|s| (Key::new(&s.namespace, &s.name), Arc::new(s)))
                .collect(),
            ingresses: ingresses
                .into_iter()
                .map(|i| (Key::new(&i.namespace, &i.name), Arc::new(i)))
                .collect(),
            revisions: revisions
                .into_iter()
                .map(|r| (Key::new(&r.namespace, &r.name), Arc::new(r)))
                .collect(),
        }
    }

    /// How many objects of every kind.
    pub fn len(&self) -> usize {
        self.services.len() + self.ingresses.len() + self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These objects with `changes` made (sharing every shard the changes do not touch).
    pub fn with_changes(&self, changes: &[Change]) -> Objects {
        let mut next = self.clone();
        for c in changes {
            match c {
                Change::Service(k, Some(s)) => {
                    next.services.insert(k.clone(), s.clone());
                }
                Change::Service(k, None) => {
                    next.services.remove(k);
                }
                Change::Ingress(k, Some(i)) => {
                    next.ingresses.insert(k.clone(), i.clone());
                }
                Change::Ingress(k, None) => {
                    next.ingresses.remove(k);
                }
                Change::Revision(k, Some(r)) => {
                    next.revisions.insert(k.clone(), r.clone());
                }
                Change::Revision(k, None) => {
                    next.revisions.remove(k);
                }
            }
        }
        next
    }

    /// The changes that turn these objects into `new`'s: added and replaced objects (equal
    /// ones are left out), and deleted ones; revisions first, so the routes that name them
    /// find them.
    pub fn diff(&self, new: &Objects) -> Vec<Change> {
        fn kind<T: PartialEq>(
            old: &ShardedMap<Key, Arc<T>>,
            new: &ShardedMap<Key, Arc<T>>,
            make: fn(Key, Option<Arc<T>>) -> Change,
            out: &mut Vec<Change>,
        ) {
            for (k, v) in new.iter() {
                if old.get(k).is_none_or(|o| !Arc::ptr_eq(o, v) && **o != **v) {
                    out.push(make(k.clone(), Some(v.clone())));
                }
            }
            for (k, _) in old.iter() {
                if !new.contains_key(k) {
                    out.push(make(k.clone(), None));
                }
            }
        }
        let mut out = Vec::new();
        kind(&self.revisions, &new.revisions, Change::Revision, &mut out);
        kind(&self.services, &new.services, Change::Service, &mut out);
        kind(&self.ingresses, &new.ingresses, Change::Ingress, &mut out);
        out
    }

    /// The whole config: `settings` with these objects, each list sorted by key.
    pub fn to_config(&self, settings: &Config) -> Config {
        fn sorted<T: Clone>(m: &ShardedMap<Key, Arc<T>>) -> Vec<T> {
            let mut v: Vec<(&Key, &Arc<T>)> = m.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.into_iter().map(|(_, t)| (**t).clone()).collect()
        }
        let mut cfg = settings.clone();
        cfg.services = sorted(&self.services);
        cfg.ingresses = sorted(&self.ingresses);
        cfg.revisions = sorted(&self.revisions);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> Objects {
        let (_, s, i, r) = settings_of(crate::parse_yaml(yaml).unwrap());
        Objects::new(s, i, r)
    }

    #[test]
    fn diff_names_what_changed_and_what_is_gone() {
        let a = objects(
            r#"
services: [{name: a, traffic: [{revision: r1, percent: 100}]},
           {name: b, traffic: [{revision: r1, percent: 100}]}]
revisions: [{name: r1}, {name: r2}]
"#,
        );
        let b = objects(
            r#"
services: [{name: a, traffic: [{revision: r2, percent: 100}]},
           {name: c, traffic: [{revision: r1, percent: 100}]}]
revisions: [{name: r1}, {name: r2, container_concurrency: 1}]
"#,
        );
        let d = a.diff(&b);
        let names: Vec<(Kind, String, bool)> = d
            .iter()
            .map(|c| (c.kind(), c.key().to_string(), c.is_delete()))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&(Kind::Revision, "default/r2".into(), false)));
        assert!(names.contains(&(Kind::Service, "default/a".into(), false)));
        assert!(names.contains(&(Kind::Service, "default/c".into(), false)));
        assert!(names.contains(&(Kind::Service, "default/b".into(), true)));
        assert_eq!(d[0].kind(), Kind::Revision, "revisions first");
        let c = a.with_changes(&d);
        assert!(c.diff(&b).is_empty());
        assert_eq!(a.diff(&a.clone()), vec![]);
    }
}
