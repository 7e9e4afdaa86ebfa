//! The server and the client task together, in process: a fake source of truth, the ADS
//! server on 127.0.0.1:0, and either the real client task with a recording sink or a raw
//! stream that shows exactly what the server pushes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::xds::{ClientOptions, XdsConfig};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_config::{Config, Key, Update};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::snapshot::content_version;
use super::*;
use crate::xds::{run_client, DeltaClient, Kind, SotwClient, XdsSink};

/// The store of `weir control`, changed the way its admin API changes it.
struct FakeSource(Arc<ConfigStore>);

impl FakeSource {
    fn new(cfg: Config) -> Arc<FakeSource> {
        let store = ConfigStore::new();
        store.apply(Update::whole(cfg), false).unwrap();
        Arc::new(FakeSource(store))
    }
    fn set_config(&self, cfg: Config) {
        self.0.apply(Update::whole(cfg), false).unwrap();
    }
    fn set_endpoints(&self, name: &str, eps: &[&str]) {
        let eps = eps.iter().map(|e| e.to_string()).collect();
        self.0
            .set_endpoints(&Key::new("default", name), eps, false)
            .unwrap()
            .unwrap();
    }
}

fn config(services: usize) -> Config {
    let services: Vec<_> = (0..services)
        .map(|i| json!({"name": format!("s{i}"), "traffic": [{"revision": format!("s{i}-1"), "percent": 100}]}))
        .collect();
    let revisions: Vec<_> = (0..services.len())
        .map(|i| json!({"name": format!("s{i}-1"), "endpoints": [format!("127.0.0.1:{}", 9000 + i)]}))
        .collect();
    serde_json::from_value(json!({"services": services, "revisions": revisions})).unwrap()
}

async fn start(source: Arc<FakeSource>) -> String {
    start_with(source, ServeOptions::default()).await
}

async fn start_with(source: Arc<FakeSource>, opts: ServeOptions) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_with(listener, source.0.clone(), opts));
    url
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Config(Box<Config>),
    Endpoints(String, String, Vec<String>),
    Connected(bool),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl XdsSink for Recorder {
    fn apply(&self, cfg: XdsConfig) -> Result<u64, String> {
        self.events
            .lock()
            .unwrap()
            .push(Event::Config(Box::new(cfg.routes())));
        Ok(0)
    }
    fn set_endpoints(&self, ns: &str, name: &str, eps: &[String]) -> Result<u64, String> {
        self.events
            .lock()
            .unwrap()
            .push(Event::Endpoints(ns.into(), name.into(), eps.to_vec()));
        Ok(0)
    }
    fn connected(&self, up: bool) {
        self.events.lock().unwrap().push(Event::Connected(up));
    }
}

impl Recorder {
    async fn wait_for(&self, what: &str, f: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        for _ in 0..500 {
            let ev = self.events.lock().unwrap().clone();
            if f(&ev) {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: {:?}", self.events.lock().unwrap());
    }
}

fn configs(ev: &[Event]) -> Vec<&Config> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Config(c) => Some(&**c),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_client_task_follows_the_server_over_delta() {
    follows(ServeOptions { delta: true }).await;
}

/// Without delta the task falls back to state of the world, with the same results.
#[tokio::test]
async fn the_client_task_follows_a_server_without_delta() {
    follows(ServeOptions { delta: false }).await;
}

async fn follows(opts: ServeOptions) {
    let source = FakeSource::new(config(2));
    let url = start_with(source.clone(), opts).await;
    let sink = Arc::new(Recorder::default());
    let opts = ClientOptions {
        url,
        node_id: "t".into(),
        sotw_only: false,
    };
    let task = tokio::spawn(run_client(opts, sink.clone()));

    let ev = sink.wait_for("first sync", |e| configs(e).len() == 1).await;
    assert_eq!(ev[0], Event::Connected(true));
    let first = configs(&ev)[0].clone();
    assert_eq!(first.revisions.len(), 2);
    weir_config::compile(&first).unwrap();

    source.set_endpoints("s1-1", &["127.0.0.1:7001", "127.0.0.1:7002"]);
    let ev = sink
        .wait_for("endpoint update", |e| {
            e.iter().any(|e| matches!(e, Event::Endpoints(..)))
        })
        .await;
    assert_eq!(
        ev.last(),
        Some(&Event::Endpoints(
            "default".into(),
            "s1-1".into(),
            vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]
        ))
    );
    assert_eq!(configs(&ev).len(), 1, "endpoint-only: no config re-applied");

    source.set_config(config(3));
    let ev = sink
        .wait_for("config update", |e| {
            configs(e).last().is_some_and(|c| c.revisions.len() == 3)
        })
        .await;
    // Clusters, endpoints and routes of one change arrive back to back: one apply.
    assert_eq!(configs(&ev).len(), 2, "{ev:?}");
    task.abort();
}

/// The error_detail of the NACKs the tests send.
fn test_nack() -> xds_api::pb::google::rpc::Status {
    xds_api::pb::google::rpc::Status {
        code: 3,
        message: "test".into(),
        details: vec![],
    }
}

async fn next(inbound: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("a response")
        .unwrap()
        .unwrap()
}

/// A raw stream: what the server sends, in which order, and how little for an endpoint change.
#[tokio::test]
async fn the_server_pushes_clusters_first_and_only_changed_endpoints() {
    let source = FakeSource::new(config(3));
    let url = start(source.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    for r in SotwClient::new("raw").initial_requests() {
        tx.send(r).await.unwrap();
    }
    let mut inbound = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ack = |r: &DiscoveryResponse| DiscoveryRequest {
        version_info: r.version_info.clone(),
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = next(&mut inbound).await;
        tx.send(ack(&r)).await.unwrap();
        got.push((
            Kind::from_type_url(&r.type_url).unwrap(),
            r.resources.len(),
            r.version_info,
        ));
    }
    assert_eq!(
        got,
        [
            (Kind::Cluster, 3, "1".to_string()),
            (Kind::Endpoints, 3, "1".to_string()),
            // One RouteConfiguration per service and listener visibility.
            (Kind::Routes, 6, "1".to_string())
        ]
    );

    source.set_endpoints("s2-1", &[]);
    let r = next(&mut inbound).await;
    assert_eq!(Kind::from_type_url(&r.type_url), Some(Kind::Endpoints));
    assert_eq!(r.version_info, "2");
    assert_eq!(
        r.resources.len(),
        1,
        "only the changed ClusterLoadAssignment"
    );
    tx.send(ack(&r)).await.unwrap();

    // A NACK is logged, not answered; the stream stays.
    tx.send(DiscoveryRequest {
        version_info: "1".into(),
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        error_detail: Some(test_nack()),
        ..Default::default()
    })
    .await
    .unwrap();
    source.set_config(config(4));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let r = next(&mut inbound).await;
        kinds.push((Kind::from_type_url(&r.type_url).unwrap(), r.resources.len()));
    }
    // The whole cluster set; the new CLA and s2's (its endpoints are back); the whole
    // set of route configurations (one is new).
    assert_eq!(
        kinds,
        [(Kind::Cluster, 4), (Kind::Endpoints, 2), (Kind::Routes, 8)]
    );
}

// === delta ===

/// A raw delta stream on `url` that has sent `first`.
async fn delta_stream(
    url: &str,
    first: Vec<DeltaDiscoveryRequest>,
) -> Result<
    (
        mpsc::Sender<DeltaDiscoveryRequest>,
        tonic::Streaming<DeltaDiscoveryResponse>,
    ),
    tonic::Status,
> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for r in first {
        tx.send(r).await.unwrap();
    }
    let inbound = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, inbound))
}

async fn next_delta(
    inbound: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("a response")
        .unwrap()
        .unwrap()
}

/// Nothing more arrives: the server answers a probe subscription (kept wildcard with "*"),
/// so anything it would have sent before shows up ahead of the probe's answer.
async fn nothing_pending(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    inbound: &mut tonic::Streaming<DeltaDiscoveryResponse>,
    probe: &str,
) {
    tx.send(DeltaDiscoveryRequest {
        type_url: Kind::Routes.type_url().into(),
        resource_names_subscribe: vec!["*".into(), probe.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = next_delta(inbound).await;
    assert_eq!(
        (r.resources.len(), r.removed_resources.clone()),
        (0, vec![probe.to_string()]),
        "expected only the probe's answer: {}",
        summary(&r)
    );
}

fn summary(r: &DeltaDiscoveryResponse) -> String {
    format!(
        "{:?}: {:?} removed {:?}",
        Kind::from_type_url(&r.type_url),
        r.resources.iter().map(|r| &r.name).collect::<Vec<_>>(),
        r.removed_resources
    )
}

fn delta_ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    }
}

/// (kind, resources, removed) of the next response, ACKed.
async fn next_acked(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    inbound: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> (Kind, Vec<String>, Vec<String>, DeltaDiscoveryResponse) {
    let r = next_delta(inbound).await;
    tx.send(delta_ack(&r)).await.unwrap();
    // Sorted: a response carries its resources in no particular order.
    let mut names: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    let mut removed = r.removed_resources.clone();
    removed.sort();
    (Kind::from_type_url(&r.type_url).unwrap(), names, removed, r)
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_what_is_gone() {
    let source = FakeSource::new(config(3));
    let url = start(source.clone()).await;
    let (tx, mut inbound) = delta_stream(&url, DeltaClient::new("raw").initial_requests())
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut versions: HashMap<String, String> = HashMap::new();
    for _ in 0..3 {
        let (kind, names, removed, r) = next_acked(&tx, &mut inbound).await;
        assert!(removed.is_empty());
        for res in &r.resources {
            // The version is the hash of the bytes sent.
            let any = res.resource.as_ref().unwrap();
            assert_eq!(res.version, content_version(&any.value));
            versions.insert(res.name.clone(), res.version.clone());
        }
        first.push((kind, names.len()));
    }
    // One RouteConfiguration per service and listener visibility.
    assert_eq!(
        first,
        [(Kind::Cluster, 3), (Kind::Endpoints, 3), (Kind::Routes, 6)]
    );

    // An endpoint change: exactly one ClusterLoadAssignment, nothing else.
    source.set_endpoints("s2-1", &[]);
    let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(
        (kind, names, removed),
        (Kind::Endpoints, vec!["default/s2-1".to_string()], vec![])
    );
    nothing_pending(&tx, &mut inbound, "probe-1").await;

    // A NACK is logged, not answered; the stream stays.
    tx.send(DeltaDiscoveryRequest {
        type_url: Kind::Endpoints.type_url().into(),
        response_nonce: "4".into(),
        error_detail: Some(test_nack()),
        ..Default::default()
    })
    .await
    .unwrap();

    // s2 goes away: its cluster, CLA and route configurations are removed; nothing else
    // is sent.
    source.set_config(config(2));
    let mut got = Vec::new();
    for _ in 0..3 {
        let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
        got.push((kind, names.len(), removed));
    }
    assert_eq!(
        got,
        [
            (Kind::Cluster, 0, vec!["default/s2-1".to_string()]),
            (Kind::Endpoints, 0, vec!["default/s2-1".to_string()]),
            (
                Kind::Routes,
                0,
                vec![
                    "external_services/service/default/s2".to_string(),
                    "internal_services/service/default/s2".to_string()
                ]
            ),
        ]
    );
    nothing_pending(&tx, &mut inbound, "probe-2").await;

    // Snapshots now follow one another, so the stream looks only at each one's diff: an
    // endpoint change is still exactly one ClusterLoadAssignment, and a config change back
    // to three services adds exactly s2's resources.
    source.set_endpoints("s1-1", &["10.0.0.9:80"]);
    let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(
        (kind, names, removed),
        (Kind::Endpoints, vec!["default/s1-1".to_string()], vec![])
    );
    source.set_config(config(3));
    let mut got = Vec::new();
    for _ in 0..3 {
        let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
        got.push((kind, names, removed));
    }
    let s2 = vec!["default/s2-1".to_string()];
    assert_eq!(got[0], (Kind::Cluster, s2.clone(), vec![]));
    // s1-1's endpoints go back to config(3)'s, and s2-1's are new.
    assert_eq!(
        got[1],
        (
            Kind::Endpoints,
            vec!["default/s1-1".to_string(), "default/s2-1".to_string()],
            vec![]
        )
    );
    assert_eq!(
        got[2],
        (
            Kind::Routes,
            vec![
                "external_services/service/default/s2".to_string(),
                "internal_services/service/default/s2".to_string()
            ],
            vec![]
        )
    );
    nothing_pending(&tx, &mut inbound, "probe-3").await;
}

#[tokio::test]
async fn a_redialled_delta_stream_gets_only_what_it_lacks() {
    let source = FakeSource::new(config(3));
    let url = start(source.clone()).await;
    let (tx, mut inbound) = delta_stream(&url, DeltaClient::new("raw").initial_requests())
        .await
        .unwrap();
    let mut held: [HashMap<String, String>; 4] = Default::default();
    for _ in 0..3 {
        let (kind, _, _, r) = next_acked(&tx, &mut inbound).await;
        for res in r.resources {
            held[kind as usize].insert(res.name, res.version);
        }
    }
    // Meanwhile s0's endpoints change (seen on this stream, so the server has it, but not
    // noted in `held`: the client lost it); the client also holds a cluster the server
    // never had.
    source.set_endpoints("s0-1", &["127.0.0.1:7000"]);
    let (kind, names, _, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(
        (kind, names),
        (Kind::Endpoints, vec!["default/s0-1".to_string()])
    );
    drop((tx, inbound));
    held[Kind::Cluster as usize].insert("default/ghost-1".into(), "x".into());
    let mut reqs = DeltaClient::new("raw").initial_requests();
    for (r, versions) in reqs.iter_mut().zip(held) {
        r.initial_resource_versions = versions;
    }
    let (tx, mut inbound) = delta_stream(&url, reqs).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
        got.push((kind, names, removed));
    }
    assert_eq!(
        got,
        [
            (Kind::Cluster, vec![], vec!["default/ghost-1".to_string()]),
            (Kind::Endpoints, vec!["default/s0-1".to_string()], vec![]),
            // Nothing changed, but a first answer always comes: the client is up to date.
            (Kind::Routes, vec![], vec![]),
        ]
    );
}

#[tokio::test]
async fn named_delta_subscriptions_get_their_names_only() {
    let source = FakeSource::new(config(3));
    let url = start(source.clone()).await;
    let first = vec![DeltaDiscoveryRequest {
        node: Some(Default::default()),
        type_url: Kind::Endpoints.type_url().into(),
        resource_names_subscribe: vec!["default/s1-1".into(), "default/nope".into()],
        ..Default::default()
    }];
    let (tx, mut inbound) = delta_stream(&url, first).await.unwrap();
    let (kind, names, removed, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(
        (kind, names, removed),
        (
            Kind::Endpoints,
            vec!["default/s1-1".to_string()],
            vec!["default/nope".to_string()]
        ),
        "the name asked for, and the one that does not exist"
    );
    // Another revision's change is not sent; this one's is.
    source.set_endpoints("s2-1", &[]);
    source.set_endpoints("s1-1", &[]);
    let (_, names, _, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(names, ["default/s1-1"]);
    // Subscribing to one more sends it (even unchanged); unsubscribing stops the updates.
    tx.send(DeltaDiscoveryRequest {
        type_url: Kind::Endpoints.type_url().into(),
        resource_names_subscribe: vec!["default/s0-1".into()],
        resource_names_unsubscribe: vec!["default/s1-1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, names, _, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(names, ["default/s0-1"]);
    source.set_endpoints("s1-1", &["127.0.0.1:7001"]);
    source.set_endpoints("s0-1", &["127.0.0.1:7000"]);
    let (_, names, _, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(names, ["default/s0-1"], "s1-1 is unsubscribed");
    // "*" turns it into a wildcard: everything the client lacks.
    tx.send(DeltaDiscoveryRequest {
        type_url: Kind::Endpoints.type_url().into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, names, _, _) = next_acked(&tx, &mut inbound).await;
    assert_eq!(names, ["default/s1-1", "default/s2-1"]);
}

#[tokio::test]
async fn without_delta_the_server_answers_unimplemented() {
    let source = FakeSource::new(config(1));
    let url = start_with(source, ServeOptions { delta: false }).await;
    let refused = delta_stream(&url, DeltaClient::new("raw").initial_requests()).await;
    let Err(status) = refused else {
        panic!("a delta stream without delta")
    };
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}
