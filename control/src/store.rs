//! The config store of `weir control`: the config in force as one compiled generation,
//! changed only through the same pipeline as the proxy's ([`Compiled::plan`]: validate,
//! compile what changed), and a feed of what each generation changed, which the xDS server
//! turns into resources.
//!
//! It is not a data plane: no run-time revisions, no endpoint names resolved, no
//! certificates read (proxies do that with what they are sent). So its dry run and its apply
//! check exactly the same things.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;
use weir_config::{Change, Compiled, ConfigErrors, Key, Update};

/// One generation of the store.
pub struct Generation {
    pub generation: u64,
    pub config: Compiled,
}

/// What one generation changed.
#[derive(Debug, Clone)]
pub struct Published {
    pub generation: u64,
    /// The objects put or deleted (each once).
    pub changes: Arc<[Change]>,
    /// The settings changed: every resource may differ.
    pub settings_changed: bool,
}

/// Versioned config and change feed.
pub struct ConfigStore {
    current: RwLock<Arc<Generation>>,
    /// Serialises updates, so generations are published in order.
    updating: Mutex<()>,
    feed: broadcast::Sender<Published>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        ConfigStore {
            current: RwLock::new(Arc::new(Generation {
                generation: 0,
                config: Compiled::default(),
            })),
            updating: Mutex::new(()),
            feed: broadcast::channel(1024).0,
        }
    }
}

impl ConfigStore {
    pub fn new() -> Arc<ConfigStore> {
        Arc::new(ConfigStore::default())
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every generation published from now on. A receiver that lags gets `Lagged` and must
    /// start over from [`ConfigStore::current`].
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.feed.subscribe()
    }

    /// Checks `update` and, unless `dry_run`, publishes it as the next generation (one with
    /// no change is not published). The generation in force afterwards.
    pub fn apply(&self, update: Update, dry_run: bool) -> Result<u64, ConfigErrors> {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current();
        let plan = cur.config.plan(update, |_| ())?;
        if dry_run || (plan.changes.is_empty() && !plan.settings_changed) {
            return Ok(cur.generation);
        }
        let generation = cur.generation + 1;
        let published = Published {
            generation,
            changes: plan.changes.into(),
            settings_changed: plan.settings_changed,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Generation {
            generation,
            config: plan.next,
        });
        let _ = self.feed.send(published);
        Ok(generation)
    }

    /// Replaces one revision's endpoints; `None` if the revision is not in the config.
    pub fn set_endpoints(
        &self,
        key: &Key,
        endpoints: Vec<String>,
        dry_run: bool,
    ) -> Option<Result<u64, ConfigErrors>> {
        let mut rev = (**self.current().config.objects.revisions.get(key)?).clone();
        rev.endpoints = endpoints;
        let change = Change::Revision(key.clone(), Some(Arc::new(rev)));
        Some(self.apply(Update::Changes(vec![change]), dry_run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_and_their_changes() {
        let store = ConfigStore::new();
        let mut feed = store.subscribe();
        let cfg = weir_config::parse_yaml(
            r#"
services: [{name: a, traffic: [{revision: r1, percent: 100}]}]
revisions: [{name: r1}]
"#,
        )
        .unwrap();
        assert_eq!(store.apply(Update::whole(cfg.clone()), true).unwrap(), 0);
        assert_eq!(store.apply(Update::whole(cfg.clone()), false).unwrap(), 1);
        let p = feed.try_recv().unwrap();
        assert_eq!((p.generation, p.changes.len()), (1, 2));
        // Nothing changed: no new generation.
        assert_eq!(store.apply(Update::whole(cfg), false).unwrap(), 1);
        let key = Key::new("default", "r1");
        let g = store
            .set_endpoints(&key, vec!["127.0.0.1:9".into()], false)
            .unwrap()
            .unwrap();
        assert_eq!(g, 2);
        let p = feed.try_recv().unwrap();
        assert_eq!(p.changes.len(), 1);
        assert!(store
            .set_endpoints(&key, vec!["nonsense".into()], false)
            .unwrap()
            .is_err());
        assert!(store
            .set_endpoints(&Key::new("default", "nope"), vec![], false)
            .is_none());
        assert_eq!(store.current().generation, 2);
    }
}
