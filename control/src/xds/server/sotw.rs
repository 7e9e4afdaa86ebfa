//! What a state-of-the-world stream sends: per subscribed type, the resources that
//! changed since its last response (Clusters and RouteConfigurations: the whole set when
//! any changed), with the generation as version and a fresh nonce; stale ACKs ignored.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::protobuf::Any;

use super::snapshot::{same, Item, XdsSnapshot};
use super::{identify, AdsStream, Gone, Stream};
use crate::xds::Kind;

/// One subscription of a stream to one type.
pub(super) struct Sub {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// What this stream last sent, by name.
    sent: HashMap<String, Arc<Item>>,
    /// Nonce of the last response sent; requests with an older one are stale.
    nonce: String,
    /// Version of the last response sent.
    version: String,
}

impl AdsStream for Stream {
    type Request = DiscoveryRequest;
    async fn on_request(&mut self, req: DiscoveryRequest, snap: &XdsSnapshot) -> Result<(), Gone> {
        Stream::on_request(self, req, snap).await
    }
    async fn push_all(&mut self, snap: &XdsSnapshot) -> Result<(), Gone> {
        Stream::push_all(self, snap).await
    }
}

impl Stream {
    async fn on_request(&mut self, req: DiscoveryRequest, snap: &XdsSnapshot) -> Result<(), Gone> {
        let Some(kind) = identify(
            self.id,
            &mut self.node,
            req.node.as_ref(),
            &req.type_url,
            "",
        ) else {
            return Ok(());
        };
        let names = (!req.resource_names.is_empty()
            && !req.resource_names.iter().any(|n| n == "*"))
        .then(|| req.resource_names.iter().cloned().collect::<BTreeSet<_>>());
        let slot = &mut self.subs[kind as usize];
        let Some(sub) = slot else {
            *slot = Some(Sub {
                names,
                sent: HashMap::new(),
                nonce: String::new(),
                version: String::new(),
            });
            return self.push(kind, snap, true).await;
        };
        if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            return Ok(()); // answers an older response; a newer one is on its way
        }
        if let Some(err) = &req.error_detail {
            log::warn!(
                "ADS stream {} (node {:?}) NACKed {} version {} (keeps version {:?}): {}",
                self.id,
                self.node,
                kind.label(),
                sub.version,
                req.version_info,
                err.message
            );
        } else if !req.response_nonce.is_empty() {
            log::debug!(
                "ADS stream {} (node {:?}) ACKed {} version {}",
                self.id,
                self.node,
                kind.label(),
                req.version_info
            );
        }
        let resubscribe = req.response_nonce.is_empty() || names != sub.names;
        sub.names = names;
        if resubscribe {
            return self.push(kind, snap, true).await;
        }
        Ok(())
    }

    async fn push_all(&mut self, snap: &XdsSnapshot) -> Result<(), Gone> {
        for kind in Kind::ALL {
            if self.subs[kind as usize].is_some() {
                self.push(kind, snap, false).await?;
            }
        }
        Ok(())
    }

    /// Sends `kind` if it changed since the last response (or always, when `forced`).
    async fn push(&mut self, kind: Kind, snap: &XdsSnapshot, forced: bool) -> Result<(), Gone> {
        let set = &snap.types[kind as usize];
        let Some(sub) = &mut self.subs[kind as usize] else {
            return Ok(());
        };
        let wanted: Vec<(&String, &Arc<Item>)> = set
            .items
            .iter()
            .filter(|(n, _)| sub.names.as_ref().is_none_or(|s| s.contains(*n)))
            .collect();
        let differs = |(n, a): &(&String, &Arc<Item>)| sub.sent.get(*n).is_none_or(|s| !same(s, a));
        let send: Vec<Any> = if forced {
            wanted.iter().map(|(_, a)| a.any.clone()).collect()
        } else if matches!(kind, Kind::Cluster | Kind::Routes) {
            // The whole set, or nothing: a missing one means a removed one.
            let changed = wanted.len() != sub.sent.len() || wanted.iter().any(differs);
            if !changed {
                return Ok(());
            }
            wanted.iter().map(|(_, a)| a.any.clone()).collect()
        } else {
            let changed: Vec<Any> = wanted
                .iter()
                .filter(|e| differs(e))
                .map(|(_, a)| a.any.clone())
                .collect();
            if changed.is_empty() {
                // Resources may have gone (with their clusters); nothing to send for that.
                sub.sent.retain(|n, _| set.items.contains_key(n));
                return Ok(());
            }
            changed
        };
        sub.sent = wanted
            .iter()
            .map(|(n, a)| ((*n).clone(), (*a).clone()))
            .collect();
        self.nonce += 1;
        sub.nonce = self.nonce.to_string();
        sub.version = set.version.clone();
        let resp = DiscoveryResponse {
            version_info: set.version.clone(),
            resources: send,
            type_url: kind.type_url().into(),
            nonce: sub.nonce.clone(),
            ..Default::default()
        };
        log::debug!(
            "ADS stream {} (node {:?}): {} version {} ({} resources)",
            self.id,
            self.node,
            kind.label(),
            resp.version_info,
            resp.resources.len()
        );
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }
}
