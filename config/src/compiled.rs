//! One config generation, compiled, and the step every update takes from one to the next.
//!
//! A [`Compiled`] is the settings, the objects and the route table of a generation. Every
//! config source (file, SIGHUP, the admin API's whole-config and per-object endpoints, xDS)
//! hands an [`Update`] to [`Compiled::plan`], which checks it and builds the next
//! generation, or says what is wrong and leaves the current one untouched:
//!
//! - a whole config is validated whole (errors point into it: `services[3].traffic[0]`),
//!   then turned into the changes that lead to it from the current objects;
//! - changes are validated object by object against the rest of the config in force
//!   (errors name the object: `services[default/hello].traffic[0]`);
//! - either way only the changed services and ingresses are compiled again
//!   ([`RouteTable::update`]); the next generation shares everything else with this one.
//!
//! What needs the outside world (resolving endpoint names, reading certificates) is the
//! caller's step between planning and publishing, so a dry run can do all of it too.

use std::sync::Arc;

use crate::error::ConfigErrors;
use crate::model::Config;
use crate::objects::{last_changes, settings_of, Change, Key, Kind, Objects};
use crate::table::RouteTable;
use crate::validate;

/// One config generation: settings (the config without its services, ingresses and
/// revisions), objects and routes.
pub struct Compiled<R = ()> {
    pub settings: Arc<Config>,
    pub objects: Objects,
    pub table: RouteTable<R>,
}

impl<R> Clone for Compiled<R> {
    fn clone(&self) -> Self {
        Compiled {
            settings: self.settings.clone(),
            objects: self.objects.clone(),
            table: self.table.clone(),
        }
    }
}

impl<R> Default for Compiled<R> {
    fn default() -> Self {
        Compiled {
            settings: Arc::new(Config::empty()),
            objects: Objects::default(),
            table: RouteTable::default(),
        }
    }
}

/// What an update asks for.
#[derive(Debug, Clone)]
pub enum Update {
    /// This whole config (file, SIGHUP, `PUT /v1/config`, xDS). Boxed: it is large.
    Whole(Box<Config>),
    /// These objects put or deleted; everything else as it is.
    Changes(Vec<Change>),
    /// A whole config given as settings (its lists ignored) and objects already built: an
    /// xDS client's, whose `Arc`s the new generation then shares instead of copying them.
    Objects {
        settings: Box<Config>,
        objects: Objects,
    },
}

impl Update {
    pub fn whole(cfg: Config) -> Update {
        Update::Whole(Box::new(cfg))
    }
}

/// The next generation, and how it differs from the current one.
pub struct Plan<R> {
    pub next: Compiled<R>,
    /// The objects that changed: the last change of each (a whole config's diff).
    pub changes: Vec<Change>,
    /// The settings differ (a whole config only).
    pub settings_changed: bool,
    /// A whole config's revisions, in its order: to name `revisions[i]` in errors found
    /// after planning (an endpoint name that does not resolve).
    revision_order: Option<Vec<Key>>,
}

impl<R> Plan<R> {
    /// Where an error about object `key` points: `revisions[2]` in a whole config,
    /// `revisions[default/hello-1]` for a change.
    pub fn path_of(&self, kind: Kind, key: &Key) -> String {
        if kind == Kind::Revision {
            if let Some(i) = self
                .revision_order
                .as_ref()
                .and_then(|o| o.iter().position(|k| k == key))
            {
                return format!("revisions[{i}]");
            }
        }
        crate::objects::path_of(kind, key)
    }

    /// The revisions put by this update.
    pub fn revisions_put(&self) -> impl Iterator<Item = (&Key, &Arc<crate::model::Revision>)> {
        self.changes.iter().filter_map(|c| match c {
            Change::Revision(k, Some(r)) => Some((k, r)),
            _ => None,
        })
    }
}

impl<R: Clone> Compiled<R> {
    /// Checks `update` against this generation and compiles the next; `resolve` gives the
    /// `R` of a revision a changed route names. On error nothing is built.
    pub fn plan(
        &self,
        update: Update,
        resolve: impl FnMut(&Key) -> R,
    ) -> Result<Plan<R>, ConfigErrors> {
        let (settings, whole, order) = match update {
            Update::Changes(changes) => return self.plan_changes(changes, resolve),
            Update::Whole(cfg) => {
                validate::validate(&cfg)?;
                let (settings, services, ingresses, revisions) = settings_of(*cfg);
                let order = revisions
                    .iter()
                    .map(|r| Key::new(&r.namespace, &r.name))
                    .collect();
                (
                    settings,
                    Objects::new(services, ingresses, revisions),
                    order,
                )
            }
            Update::Objects { settings, objects } => {
                // Checked as the whole config it is (a copy, dropped at once), whose lists
                // are in key order.
                validate::validate(&objects.to_config(&settings))?;
                let (settings, ..) = settings_of(*settings);
                let mut order: Vec<Key> =
                    objects.revisions.iter().map(|(k, _)| k.clone()).collect();
                order.sort();
                (settings, objects, order)
            }
        };
        let changes = self.objects.diff(&whole);
        // The objects that did not change keep this generation's shards.
        let objects = self.objects.with_changes(&changes);
        let settings_changed = settings != *self.settings;
        let settings = if settings_changed {
            Arc::new(settings)
        } else {
            self.settings.clone()
        };
        let table = self
            .table
            .update(&settings, &self.objects, &objects, &changes, resolve)?;
        Ok(Plan {
            next: Compiled {
                settings,
                objects,
                table,
            },
            changes,
            settings_changed,
            revision_order: Some(order),
        })
    }

    fn plan_changes(
        &self,
        changes: Vec<Change>,
        resolve: impl FnMut(&Key) -> R,
    ) -> Result<Plan<R>, ConfigErrors> {
        let objects = self.objects.with_changes(&changes);
        validate::changes(&self.settings, &objects, &changes)?;
        let table =
            self.table
                .update(&self.settings, &self.objects, &objects, &changes, resolve)?;
        let changes = last_changes(&changes).into_iter().cloned().collect();
        Ok(Plan {
            next: Compiled {
                settings: self.settings.clone(),
                objects,
                table,
            },
            changes,
            settings_changed: false,
            revision_order: None,
        })
    }
}

impl<R> Compiled<R> {
    /// One line for `weir check`: `3 services, 0 ingresses, 5 revisions, 20 hosts`.
    pub fn summary(&self) -> String {
        format!(
            "{} services, {} ingresses, {} revisions, {} hosts",
            self.objects.services.len(),
            self.objects.ingresses.len(),
            self.objects.revisions.len(),
            self.table.host_count()
        )
    }

    /// The whole config of this generation (its lists sorted by namespace and name).
    pub fn config(&self) -> Config {
        self.objects.to_config(&self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_config_becomes_the_changes_that_lead_to_it() {
        let c0: Compiled = Compiled::default();
        let cfg = crate::parse_yaml(
            r#"
services: [{name: a, traffic: [{revision: r1, percent: 100}]}]
revisions: [{name: r1}, {name: r2}]
"#,
        )
        .unwrap();
        let p = c0.plan(Update::whole(cfg.clone()), |_| ()).unwrap();
        assert_eq!(p.changes.len(), 3);
        assert!(!p.settings_changed);
        let c1 = p.next;
        assert_eq!(c1.config(), cfg);
        // The same config again changes nothing.
        let p = c1.plan(Update::whole(cfg.clone()), |_| ()).unwrap();
        assert!(p.changes.is_empty() && !p.settings_changed);
        // An unknown revision in a whole config points at its index.
        let mut bad = cfg.clone();
        bad.services[0].traffic[0].revision = "nope".into();
        let Err(err) = c1.plan(Update::whole(bad), |_| ()) else {
            panic!("an unknown revision is refused")
        };
        assert_eq!(err.0[0].path, "services[0].traffic[0].revision");
        let mut other = cfg;
        other.domain = "example.org".into();
        let p = c1.plan(Update::whole(other), |_| ()).unwrap();
        assert!(p.settings_changed && p.changes.is_empty());
        assert!(p
            .next
            .table
            .lookup(b"a.default.example.org", crate::Listener::External)
            .unwrap()
            .is_some());
    }
}
