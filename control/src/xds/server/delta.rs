//! What a delta stream sends: per subscribed type, the resources whose version the client
//! does not have and the names it has that are gone; subscriptions by name or wildcard.

use std::collections::{BTreeSet, HashMap};

use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::snapshot::{Item, TypeSet, XdsSnapshot};
use super::{identify, AdsStream, DeltaStream, Gone};
use crate::xds::Kind;

/// One delta subscription of a stream to one type.
pub(super) struct DeltaSub {
    /// Every resource of the type: `"*"` subscribed, or an empty first subscription.
    wildcard: bool,
    /// Whether `wildcard` came from an empty first subscription (the legacy form), which
    /// ends once the client subscribes to names without `"*"`.
    legacy: bool,
    /// Names subscribed to by name.
    names: BTreeSet<String>,
    /// Name -> version of what the client has, as far as this stream knows.
    known: HashMap<String, String>,
}

impl DeltaSub {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    async fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> Result<(), Gone> {
        let Some(kind) = identify(
            self.id,
            &mut self.node,
            req.node.as_ref(),
            &req.type_url,
            " (delta)",
        ) else {
            return Ok(());
        };
        if let Some(err) = &req.error_detail {
            log::warn!(
                "ADS stream {} (node {:?}) NACKed {} (nonce {}): {}",
                self.id,
                self.node,
                kind.label(),
                req.response_nonce,
                err.message
            );
        } else if !req.response_nonce.is_empty() {
            log::debug!(
                "ADS stream {} (node {:?}) ACKed {} (nonce {})",
                self.id,
                self.node,
                kind.label(),
                req.response_nonce
            );
        }
        let star = |names: &[String]| names.iter().any(|n| n == "*");
        let named = |names: &[String]| -> Vec<String> {
            names.iter().filter(|n| *n != "*").cloned().collect()
        };
        let subscribe = named(&req.resource_names_subscribe);
        let slot = &mut self.subs[kind as usize];
        let Some(sub) = slot else {
            // The first request of this type: the subscription, and what the client
            // already has (a re-dialled stream), which need not be sent again.
            let legacy = req.resource_names_subscribe.is_empty();
            let mut sub = DeltaSub {
                wildcard: legacy || star(&req.resource_names_subscribe),
                legacy,
                names: subscribe.iter().cloned().collect(),
                known: req.initial_resource_versions,
            };
            sub.known
                .retain(|n, _| sub.wildcard || sub.names.contains(n));
            *slot = Some(sub);
            return self.push(kind, snap, &subscribe, true).await;
        };
        let unsubscribe = named(&req.resource_names_unsubscribe);
        if subscribe.is_empty()
            && unsubscribe.is_empty()
            && !star(&req.resource_names_subscribe)
            && !star(&req.resource_names_unsubscribe)
        {
            return Ok(()); // an ACK or NACK only
        }
        if star(&req.resource_names_subscribe) {
            sub.wildcard = true;
            sub.legacy = false;
        } else if sub.legacy && !subscribe.is_empty() {
            // Names without "*" after a legacy wildcard: from now on, those names only.
            sub.wildcard = false;
            sub.legacy = false;
        }
        if star(&req.resource_names_unsubscribe) {
            sub.wildcard = false;
            sub.legacy = false;
        }
        for n in &subscribe {
            sub.names.insert(n.clone());
            // Subscribed names are always sent: the client may have dropped its copy.
            sub.known.remove(n);
        }
        for n in &unsubscribe {
            sub.names.remove(n);
        }
        // The client drops what it no longer subscribes to, without being told.
        let DeltaSub {
            known,
            wildcard,
            names,
            ..
        } = sub;
        known.retain(|n, _| *wildcard || names.contains(n));
        self.push(kind, snap, &subscribe, false).await
    }

    async fn push_all(&mut self, snap: &XdsSnapshot) -> Result<(), Gone> {
        // Built from the snapshot last pushed: only its diff can differ from what the
        // client has (what `known` says is checked all the same).
        let incremental = self.pushed != 0 && snap.base == self.pushed;
        for kind in Kind::ALL {
            if self.subs[kind as usize].is_none() {
                continue;
            }
            if incremental {
                self.push_diff(kind, snap).await?;
            } else {
                self.push(kind, snap, &[], false).await?;
            }
        }
        self.pushed = snap.id;
        Ok(())
    }
}

/// A delta `Resource` of `item`, named.
fn resource(name: &str, item: &Item) -> Resource {
    Resource {
        name: name.to_owned(),
        version: item.version.clone(),
        resource: Some(item.any.clone()),
        ..Default::default()
    }
}

impl DeltaStream {
    /// [`Self::push`] over the names of `snap`'s diff only.
    async fn push_diff(&mut self, kind: Kind, snap: &XdsSnapshot) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let diff = &snap.diffs[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let resources: Vec<Resource> = diff
            .changed
            .iter()
            .filter(|n| sub.wants(n))
            .filter_map(|n| set.items.get_key_value(n))
            .filter(|(n, item)| sub.known.get(*n) != Some(&item.version))
            .map(|(n, item)| resource(n, item))
            .collect();
        let removed: Vec<String> = diff
            .removed
            .iter()
            .filter(|n| sub.known.contains_key(*n) && !set.items.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.send(kind, set, resources, removed).await
    }

    /// Sends the `kind` resources whose version the client does not have, and the names it
    /// has that are gone (and `fresh`ly subscribed names that do not exist); nothing when
    /// that is nothing, unless `always`.
    async fn push(
        &mut self,
        kind: Kind,
        snap: &XdsSnapshot,
        fresh: &[String],
        always: bool,
    ) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let resources: Vec<Resource> = set
            .items
            .iter()
            .filter(|(n, item)| sub.wants(n) && sub.known.get(*n) != Some(&item.version))
            .map(|(n, item)| resource(n, item))
            .collect();
        let mut removed: BTreeSet<String> = sub
            .known
            .keys()
            .filter(|n| !set.items.contains_key(*n))
            .cloned()
            .collect();
        removed.extend(
            fresh
                .iter()
                .filter(|n| !set.items.contains_key(*n))
                .cloned(),
        );
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.send(kind, set, resources, removed.into_iter().collect())
            .await
    }

    /// Sends one delta response (even an empty one) and notes what the client now has.
    async fn send(
        &mut self,
        kind: Kind,
        set: &TypeSet,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), Gone> {
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        for r in &resources {
            sub.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.known.remove(n);
        }
        self.nonce += 1;
        let resp = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources,
            type_url: kind.type_url().into(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        log::debug!(
            "ADS stream {} (node {:?}): delta {} version {} ({} resources, {} removed)",
            self.id,
            self.node,
            kind.label(),
            resp.system_version_info,
            resp.resources.len(),
            resp.removed_resources.len()
        );
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }
}
