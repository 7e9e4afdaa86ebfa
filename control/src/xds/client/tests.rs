//! The client fed with responses: the ACK or NACK it emits (version, nonce, error text) and
//! the update it hands out.

use serde_json::json;
use weir_config::Config;
use xds_api::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::protobuf::{Any, UInt32Value};

use super::*;
use crate::translate::{load_assignment, to_resources, Resources};

pub(crate) fn config() -> Config {
    serde_json::from_value(json!({
        "services": [
            {"name": "hello", "traffic": [
                {"revision": "hello-1", "percent": 90},
                {"revision": "hello-2", "percent": 10}]},
            {"name": "other", "traffic": [{"revision": "other-1", "percent": 100}]}],
        "revisions": [
            {"name": "hello-1", "endpoints": ["127.0.0.1:9001"]},
            {"name": "hello-2", "endpoints": []},
            {"name": "other-1", "endpoints": ["127.0.0.1:9003"]}],
    }))
    .unwrap()
}

fn response<M: prost::Name>(
    kind: Kind,
    version: &str,
    nonce: &str,
    items: &[M],
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        resources: items.iter().map(|m| Any::from_msg(m).unwrap()).collect(),
        ..Default::default()
    }
}

fn ack(out: &Output) -> &DiscoveryRequest {
    assert_eq!(out.requests.len(), 1, "{out:?}");
    let r = &out.requests[0];
    assert!(r.error_detail.is_none(), "expected an ACK: {r:?}");
    r
}

fn nack(out: &Output) -> (&DiscoveryRequest, &str) {
    assert_eq!(out.requests.len(), 1, "{out:?}");
    let r = &out.requests[0];
    let e = r.error_detail.as_ref().expect("expected a NACK");
    assert_eq!(e.code, 3);
    assert!(out.update.is_none());
    (r, &e.message)
}

/// Makes the first split of `config()`'s routes add up to 90; NACKed as [`WEIGHTS_90`].
pub(crate) fn break_weights(routes: &mut [RouteConfiguration]) {
    let Some(route::Action::Route(a)) = &mut routes[0].virtual_hosts[0].routes[0].action else {
        panic!("a route action")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &mut a.cluster_specifier
    else {
        panic!("weighted clusters")
    };
    wc.clusters[1].weight = Some(UInt32Value { value: 0 });
}

/// The NACK message of [`break_weights`].
pub(crate) const WEIGHTS_90: &str = "RouteConfiguration \"external_services\": virtual_hosts[0] \
    (\"default/hello\").routes[0].route.weighted_clusters: weights add up to 90; they must add up to 100";

/// A client synced on `config()` at version "1".
fn synced() -> (SotwClient, Resources) {
    let res = to_resources(&config());
    let mut c = SotwClient::new("node-1");
    let out = c.on_response(response(Kind::Cluster, "1", "n1", &res.clusters));
    assert_eq!(ack(&out).version_info, "1");
    assert_eq!(out.update, None);
    let out = c.on_response(response(Kind::Endpoints, "1", "n2", &res.endpoints));
    ack(&out);
    assert_eq!(out.update, None, "routes are still missing");
    let out = c.on_response(response(Kind::Routes, "1", "n3", &res.routes));
    let a = ack(&out);
    assert_eq!(
        (a.version_info.as_str(), a.response_nonce.as_str()),
        ("1", "n3")
    );
    assert_eq!(a.type_url, Kind::Routes.type_url());
    let Some(Update::Config(x)) = &out.update else {
        panic!("first sync gives a config: {out:?}")
    };
    assert_eq!(
        x.routes().ingresses.len(),
        4,
        "external and cluster-local hosts of 2 services"
    );
    assert_eq!(x.routes().revisions.len(), 3);
    weir_config::compile(&x.routes()).unwrap();
    assert!(c.synced());
    (c, res)
}

#[test]
fn initial_requests_subscribe_to_everything() {
    let reqs = SotwClient::new("n").initial_requests();
    let urls: Vec<_> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, Kind::ALL.map(Kind::type_url));
    for r in &reqs {
        assert_eq!(r.node.as_ref().unwrap().id, "n");
        assert!(r.resource_names.is_empty(), "wildcard");
        assert_eq!(r.version_info, "");
    }
    let (c, _) = synced();
    // Every type it received (no Listener was sent).
    assert!(c.initial_requests().iter().all(|r| r.version_info
        == if r.type_url == Kind::Listener.type_url() {
            ""
        } else {
            "1"
        }));
}

#[test]
fn bad_weights_are_nacked_and_change_nothing() {
    let (mut c, mut res) = synced();
    break_weights(&mut res.routes);
    let out = c.on_response(response(Kind::Routes, "2", "n4", &res.routes));
    let (r, msg) = nack(&out);
    assert_eq!(
        r.version_info, "1",
        "the NACK carries the last good version"
    );
    assert_eq!(r.response_nonce, "n4");
    assert_eq!(msg, WEIGHTS_90);
    // The last good state stays: endpoints still flow, a later good response still applies.
    let cla = load_assignment("default/hello-2", &["127.0.0.1:9002".into()]);
    let out = c.on_response(response(Kind::Endpoints, "3", "n5", &[cla]));
    assert_eq!(ack(&out).version_info, "3");
    assert_eq!(
        out.update,
        Some(Update::Endpoints(vec![(
            "default".into(),
            "hello-2".into(),
            vec!["127.0.0.1:9002".into()]
        )]))
    );
    let good = to_resources(&config());
    let out = c.on_response(response(Kind::Routes, "4", "n6", &good.routes));
    ack(&out);
    assert_eq!(
        out.update, None,
        "same routes as in force: nothing to apply"
    );
}

#[test]
fn endpoint_changes_are_endpoint_only() {
    let (mut c, _) = synced();
    let same = load_assignment("default/hello-1", &["127.0.0.1:9001".into()]);
    let out = c.on_response(response(Kind::Endpoints, "2", "a", &[same]));
    ack(&out);
    assert_eq!(out.update, None, "unchanged endpoints");
    let cla = load_assignment("default/other-1", &[]);
    let out = c.on_response(response(Kind::Endpoints, "3", "b", &[cla]));
    assert_eq!(
        out.update,
        Some(Update::Endpoints(vec![(
            "default".into(),
            "other-1".into(),
            vec![]
        )]))
    );
}

#[test]
fn routes_to_unknown_clusters_are_nacked() {
    let (mut c, mut res) = synced();
    let Some(route::Action::Route(a)) = &mut res.routes[0].virtual_hosts[1].routes[0].action else {
        panic!()
    };
    a.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(
        "default/nope-1".into(),
    ));
    let out = c.on_response(response(Kind::Routes, "2", "x", &res.routes));
    let (r, msg) = nack(&out);
    assert_eq!(r.version_info, "1");
    assert_eq!(
        msg,
        "RouteConfiguration \"external_services\": virtual_hosts[1] (\"default/other\")\
         .routes[0].route.cluster: cluster \"default/nope-1\" is not among the Clusters received"
    );
}

#[test]
fn a_removed_cluster_waits_for_the_routes() {
    let (mut c, _) = synced();
    let next: Config = serde_json::from_value(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-1", "percent": 100}]}],
        "revisions": [{"name": "hello-1", "endpoints": ["127.0.0.1:9001"]}],
    }))
    .unwrap();
    let res = to_resources(&next);
    let out = c.on_response(response(Kind::Cluster, "2", "c", &res.clusters));
    assert_eq!(ack(&out).version_info, "2");
    assert_eq!(out.update, None, "routes still name the removed clusters");
    let out = c.on_response(response(Kind::Routes, "2", "r", &res.routes));
    ack(&out);
    let Some(Update::Config(x)) = out.update else {
        panic!("{out:?}")
    };
    assert_eq!(x.routes().revisions.len(), 1);
    assert_eq!(x.routes().ingresses.len(), 2);
}

#[test]
fn config_errors_are_nacked_with_their_path() {
    let (mut c, mut res) = synced();
    res.routes[0].virtual_hosts[0].routes[0].request_headers_to_add =
        vec![xds_api::pb::envoy::config::core::v3::HeaderValueOption {
            header: Some(xds_api::pb::envoy::config::core::v3::HeaderValue {
                key: "connection".into(),
                value: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
    let out = c.on_response(response(Kind::Routes, "2", "h", &res.routes));
    let (_, msg) = nack(&out);
    assert!(
        msg.starts_with("RouteConfiguration \"external_services\": virtual_hosts[0]"),
        "{msg}"
    );
    assert!(msg.contains("hop-by-hop"), "{msg}");
    assert!(
        msg.contains(
            "(config path ingresses[default/hello].rules[0].paths[0].append_headers.connection)"
        ),
        "{msg}"
    );
}

#[test]
fn other_types_and_garbage_are_nacked() {
    let mut c = SotwClient::new("n");
    let out = c.on_response(DiscoveryResponse {
        version_info: "1".into(),
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
        nonce: "l".into(),
        ..Default::default()
    });
    let (r, msg) = nack(&out);
    assert_eq!(r.response_nonce, "l");
    assert!(msg.contains("is not subscribed"), "{msg}");
    let out = c.on_response(DiscoveryResponse {
        version_info: "1".into(),
        type_url: Kind::Cluster.type_url().into(),
        nonce: "g".into(),
        resources: vec![Any {
            type_url: Kind::Cluster.type_url().into(),
            value: vec![0xff, 0xff, 0xff],
        }],
        ..Default::default()
    });
    let (_, msg) = nack(&out);
    assert!(
        msg.starts_with("Cluster response: resources[0]: cannot decode"),
        "{msg}"
    );
}

#[test]
fn refused_updates_are_nacked_and_forgotten() {
    let (mut c, _) = synced();
    let next = to_resources(
        &serde_json::from_value(json!({
            "services": [{"name": "hello", "traffic": [{"revision": "hello-1", "percent": 100}]}],
            "revisions": [{"name": "hello-1", "endpoints": ["127.0.0.1:9001"]}],
        }))
        .unwrap(),
    );
    let out = c.on_response(response(Kind::Routes, "2", "r2", &next.routes));
    assert!(matches!(out.update, Some(Update::Config(_))));
    let r = c.refused("cannot resolve x").expect("a NACK");
    assert_eq!(r.version_info, "1");
    assert_eq!(r.response_nonce, "r2");
    assert_eq!(
        r.error_detail.unwrap().message,
        "version 2: not applied: cannot resolve x"
    );
    // The proxy still has the first config, so the same routes again are a change again.
    let out = c.on_response(response(Kind::Routes, "3", "r3", &next.routes));
    assert!(matches!(out.update, Some(Update::Config(_))), "{out:?}");
}
