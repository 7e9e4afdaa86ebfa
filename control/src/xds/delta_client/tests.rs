//! The delta client fed with responses: the ACK or NACK it emits, the update it hands out,
//! and the versions it reports on a re-dial.

use serde_json::json;
use weir_config::Config;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use xds_api::pb::google::protobuf::Any;

use super::*;
use crate::translate::{load_assignment, to_resources, Resources};
use crate::xds::client::tests::{break_weights, config, WEIGHTS_90};
use crate::xds::{SotwClient, Update};

/// The resources of `kind` in `res` as delta resources, all at `version`.
fn items(kind: Kind, res: &Resources, version: &str) -> Vec<Resource> {
    let one = |name: &str, any: Any| Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    };
    match kind {
        Kind::Cluster => res
            .clusters
            .iter()
            .map(|c| one(&c.name, Any::from_msg(c).unwrap()))
            .collect(),
        Kind::Endpoints => res
            .endpoints
            .iter()
            .map(|e| one(&e.cluster_name, Any::from_msg(e).unwrap()))
            .collect(),
        Kind::Routes => res
            .routes
            .iter()
            .map(|r| one(&r.name, Any::from_msg(r).unwrap()))
            .collect(),
        Kind::Listener => Vec::new(),
    }
}

fn response(
    kind: Kind,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Feeds `c` every `kind` resource of `res` at `version`, removing nothing.
fn send(
    c: &mut DeltaClient,
    kind: Kind,
    nonce: &str,
    res: &Resources,
    version: &str,
) -> DeltaOutput {
    c.on_response(response(kind, nonce, items(kind, res, version), &[]))
}

fn ack(out: &DeltaOutput, nonce: &str) {
    assert_eq!(out.requests.len(), 1, "{out:?}");
    let r = &out.requests[0];
    assert!(r.error_detail.is_none(), "expected an ACK: {r:?}");
    assert_eq!(r.response_nonce, nonce);
    assert!(r.resource_names_subscribe.is_empty() && r.initial_resource_versions.is_empty());
}

fn nack(out: &DeltaOutput, nonce: &str) -> String {
    assert_eq!(out.requests.len(), 1, "{out:?}");
    let r = &out.requests[0];
    assert_eq!(r.response_nonce, nonce);
    let e = r.error_detail.as_ref().expect("expected a NACK");
    assert_eq!(e.code, 3);
    assert!(out.update.is_none());
    e.message.clone()
}

fn config_of(out: &DeltaOutput) -> Config {
    match &out.update {
        Some(Update::Config(c)) => c.routes(),
        other => panic!("expected a whole config: {other:?}"),
    }
}

fn two_services() -> Config {
    serde_json::from_value(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-1", "percent": 100}]}],
        "revisions": [{"name": "hello-1", "endpoints": ["127.0.0.1:9001"]}],
    }))
    .unwrap()
}

/// A client synced on `config()`, every resource at version "1".
fn synced() -> (DeltaClient, Resources) {
    let res = to_resources(&config());
    let mut c = DeltaClient::new("node-1");
    let out = send(&mut c, Kind::Cluster, "c1", &res, "1");
    ack(&out, "c1");
    assert_eq!(out.update, None);
    let out = send(&mut c, Kind::Endpoints, "e1", &res, "1");
    ack(&out, "e1");
    assert_eq!(out.update, None, "routes are still missing");
    assert!(!c.synced());
    let out = send(&mut c, Kind::Routes, "r1", &res, "1");
    ack(&out, "r1");
    let cfg = config_of(&out);
    assert_eq!(cfg.ingresses.len(), 4);
    assert_eq!(cfg.revisions.len(), 3);
    weir_config::compile(&cfg).unwrap();
    assert!(c.synced());
    (c, res)
}

#[test]
fn initial_requests_are_wildcard_with_the_node_once() {
    let reqs = DeltaClient::new("n").initial_requests();
    let urls: Vec<_> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, Kind::ALL.map(Kind::type_url));
    assert_eq!(reqs[0].node.as_ref().unwrap().id, "n");
    for r in &reqs {
        assert!(r.resource_names_subscribe.is_empty(), "wildcard");
        assert!(r.initial_resource_versions.is_empty());
        assert!(r.response_nonce.is_empty());
    }
    assert!(reqs[1].node.is_none() && reqs[2].node.is_none());
}

#[test]
fn a_changed_route_gives_a_config_and_one_cluster_does_not_replace_the_set() {
    let (mut c, _) = synced();
    // One new cluster alone: the others stay (delta never replaces a whole set), and no
    // route names it yet, so nothing is applied.
    let next = to_resources(&two_services());
    let mut extra = next.clusters[0].clone();
    extra.name = "default/new-1".into();
    let one = Resources {
        clusters: vec![extra],
        ..Default::default()
    };
    let out = send(&mut c, Kind::Cluster, "c2", &one, "2");
    ack(&out, "c2");
    assert_eq!(out.update, None);
    assert_eq!(c.version(Kind::Cluster, "default/hello-1"), Some("1"));
    assert_eq!(c.version(Kind::Cluster, "default/new-1"), Some("2"));
    // hello now routes to hello-1 only: a whole config, all three revisions still known.
    let out = send(&mut c, Kind::Routes, "r2", &next, "2");
    ack(&out, "r2");
    let cfg = config_of(&out);
    assert_eq!(cfg.ingresses.len(), 2, "only hello's routes: {cfg:?}");
}

#[test]
fn a_removed_cluster_waits_for_the_routes() {
    let (mut c, _) = synced();
    let out = c.on_response(response(
        Kind::Cluster,
        "c2",
        vec![],
        &["default/hello-2", "default/other-1"],
    ));
    ack(&out, "c2");
    assert_eq!(out.update, None, "routes still name the removed clusters");
    assert_eq!(c.version(Kind::Cluster, "default/other-1"), None);
    let next = to_resources(&two_services());
    let out = send(&mut c, Kind::Routes, "r2", &next, "2");
    ack(&out, "r2");
    let cfg = config_of(&out);
    assert_eq!(cfg.revisions.len(), 1);
    assert_eq!(cfg.revisions[0].name, "hello-1");
}

#[test]
fn a_removed_route_configuration_takes_its_hosts_away() {
    let (mut c, _) = synced();
    let out = c.on_response(response(Kind::Routes, "r2", vec![], &["internal_services"]));
    ack(&out, "r2");
    let cfg = config_of(&out);
    assert_eq!(cfg.ingresses.len(), 2, "only the external hosts: {cfg:?}");
    assert_eq!(c.version(Kind::Routes, "internal_services"), None);
    assert_eq!(c.version(Kind::Routes, "external_services"), Some("1"));
}

#[test]
fn endpoint_changes_are_endpoint_only() {
    let (mut c, _) = synced();
    let one = |cla| Resources {
        endpoints: vec![cla],
        ..Default::default()
    };
    let same = load_assignment("default/hello-1", &["127.0.0.1:9001".into()]);
    let out = send(&mut c, Kind::Endpoints, "e2", &one(same), "2");
    ack(&out, "e2");
    assert_eq!(out.update, None, "unchanged endpoints");
    let moved = load_assignment("default/other-1", &["127.0.0.1:7003".into()]);
    let out = send(&mut c, Kind::Endpoints, "e3", &one(moved), "3");
    ack(&out, "e3");
    assert_eq!(
        out.update,
        Some(Update::Endpoints(vec![(
            "default".into(),
            "other-1".into(),
            vec!["127.0.0.1:7003".into()]
        )]))
    );
    // A removed load assignment leaves its cluster without endpoints.
    let out = c.on_response(response(
        Kind::Endpoints,
        "e4",
        vec![],
        &["default/hello-1"],
    ));
    ack(&out, "e4");
    assert_eq!(
        out.update,
        Some(Update::Endpoints(vec![(
            "default".into(),
            "hello-1".into(),
            vec![]
        )]))
    );
}

#[test]
fn bad_resources_are_nacked_and_change_nothing() {
    let (mut c, mut res) = synced();
    break_weights(&mut res.routes);
    let out = send(&mut c, Kind::Routes, "bad", &res, "2");
    assert_eq!(nack(&out, "bad"), WEIGHTS_90, "the state-of-the-world text");
    assert_eq!(
        c.version(Kind::Routes, "external_services"),
        Some("1"),
        "the NACKed version is not kept"
    );
    // Nothing of the response was applied: the good routes again are no change.
    let good = to_resources(&config());
    let out = send(&mut c, Kind::Routes, "r3", &good, "3");
    ack(&out, "r3");
    assert_eq!(out.update, None, "same routes as in force");

    // A NACKed removal removes nothing either: a route naming an unknown cluster rejects
    // the removal that came with it.
    let mut routes = to_resources(&two_services());
    routes.routes.truncate(1);
    let Some(xds_api::pb::envoy::config::route::v3::route::Action::Route(a)) =
        &mut routes.routes[0].virtual_hosts[0].routes[0].action
    else {
        panic!("a route action")
    };
    a.cluster_specifier = Some(
        xds_api::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
            "default/nope-1".into(),
        ),
    );
    let out = c.on_response(response(
        Kind::Routes,
        "x",
        items(Kind::Routes, &routes, "4"),
        &["internal_services"],
    ));
    assert_eq!(
        nack(&out, "x"),
        "RouteConfiguration \"external_services\": virtual_hosts[0] (\"default/hello\")\
         .routes[0].route.cluster: cluster \"default/nope-1\" is not among the Clusters received"
    );
    assert_eq!(c.version(Kind::Routes, "internal_services"), Some("3"));
    // Still in force: the removal went with the NACKed response.
    assert!(c.store.names(Kind::Routes).contains(&"internal_services"));

    // Resources without a body, under another name, or of another type.
    let mut r = items(Kind::Cluster, &good, "5");
    r[0].resource = None;
    let msg = nack(&c.on_response(response(Kind::Cluster, "g1", r, &[])), "g1");
    assert!(msg.contains("carries no resource"), "{msg}");
    let mut r = items(Kind::Cluster, &good, "5");
    r[0].name = "default/alias".into();
    let msg = nack(&c.on_response(response(Kind::Cluster, "g2", r, &[])), "g2");
    assert_eq!(
        msg,
        "Cluster \"default/hello-1\": sent under the name \"default/alias\""
    );
    let mut other = response(Kind::Cluster, "g3", vec![], &[]);
    other.type_url = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
    let msg = nack(&c.on_response(other), "g3");
    assert!(msg.contains("is not subscribed"), "{msg}");
}

#[test]
fn a_redial_sends_the_versions_held() {
    let (mut c, _) = synced();
    let out = c.on_response(response(Kind::Cluster, "c2", vec![], &["default/other-1"]));
    ack(&out, "c2");
    let reqs = c.initial_requests();
    let clusters = &reqs[0].initial_resource_versions;
    assert_eq!(
        clusters
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["default/hello-1", "default/hello-2"].into()
    );
    assert!(clusters.values().all(|v| v == "1"));
    assert_eq!(reqs[1].initial_resource_versions.len(), 3);
    assert!(
        reqs[2].initial_resource_versions.is_empty(),
        "no Listener held"
    );
    assert_eq!(
        reqs[3].initial_resource_versions.get("external_services"),
        Some(&"1".to_string())
    );
    assert!(reqs.iter().all(|r| r.resource_names_subscribe.is_empty()));

    // Switching protocols keeps what is held; the state-of-the-world client keeps no
    // per-resource versions, so back on delta every name goes with an empty version.
    let back = DeltaClient::from(SotwClient::from(c));
    assert!(back.synced());
    let reqs = back.initial_requests();
    assert_eq!(reqs[0].initial_resource_versions.len(), 2);
    assert!(reqs
        .iter()
        .flat_map(|r| r.initial_resource_versions.values())
        .all(String::is_empty));
}

#[test]
fn refused_updates_are_nacked_and_rolled_back() {
    let (mut c, _) = synced();
    let next = to_resources(&two_services());
    let out = send(&mut c, Kind::Routes, "r2", &next, "2");
    assert!(matches!(out.update, Some(Update::Config(_))));
    let r: DeltaDiscoveryRequest = c.refused("cannot resolve x").expect("a NACK");
    assert_eq!(r.response_nonce, "r2");
    assert_eq!(
        r.error_detail.unwrap().message,
        "version sys-r2: not applied: cannot resolve x"
    );
    assert!(c.refused("twice").is_none(), "one NACK per response");
    // The versions are those before the response, so a re-dial gets it again ...
    assert_eq!(c.version(Kind::Routes, "external_services"), Some("1"));
    assert_eq!(c.version(Kind::Routes, "internal_services"), Some("1"));
    // ... and the proxy still has the first config, so the same change is a change again.
    let out = send(&mut c, Kind::Routes, "r3", &next, "3");
    ack(&out, "r3");
    assert!(matches!(out.update, Some(Update::Config(_))), "{out:?}");

    // A refused endpoint-only update is rolled back too.
    let moved = load_assignment("default/hello-1", &["127.0.0.1:7001".into()]);
    let one = Resources {
        endpoints: vec![moved],
        ..Default::default()
    };
    let out = send(&mut c, Kind::Endpoints, "e2", &one, "2");
    assert!(matches!(out.update, Some(Update::Endpoints(_))));
    assert!(c.refused("no").is_some());
    let out = send(&mut c, Kind::Endpoints, "e3", &one, "3");
    assert!(
        matches!(out.update, Some(Update::Endpoints(_))),
        "the same endpoints are a change again: {out:?}"
    );
}
