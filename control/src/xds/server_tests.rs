//! The server and the client task together, in process: a fake source of truth, the ADS
//! server on 127.0.0.1:0, and either the real client task with a recording sink or a raw
//! stream that shows exactly what the server pushes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use weir_config::Config;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::*;
use crate::xds::{run_client, AdsClient, Kind, XdsSink};

struct FakeSource {
    state: Mutex<(u64, Config)>,
    changes: broadcast::Sender<SourceChange>,
}

struct Feed(broadcast::Receiver<SourceChange>);

#[async_trait::async_trait]
impl ChangeFeed for Feed {
    async fn next(&mut self) -> Option<SourceChange> {
        self.0.recv().await.ok()
    }
    fn try_next(&mut self) -> Option<SourceChange> {
        self.0.try_recv().ok()
    }
}

impl SnapshotSource for FakeSource {
    fn current(&self) -> (u64, Config) {
        self.state.lock().unwrap().clone()
    }
    fn endpoints(&self, namespace: &str, name: &str) -> Option<(u64, Vec<String>)> {
        let s = self.state.lock().unwrap();
        let r =
            s.1.revisions
                .iter()
                .find(|r| r.namespace == namespace && r.name == name)?;
        Some((s.0, r.endpoints.clone()))
    }
    fn subscribe(&self) -> Box<dyn ChangeFeed> {
        Box::new(Feed(self.changes.subscribe()))
    }
}

impl FakeSource {
    fn new(cfg: Config) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            state: Mutex::new((1, cfg)),
            changes: broadcast::channel(64).0,
        })
    }
    fn set_config(&self, cfg: Config) {
        let mut s = self.state.lock().unwrap();
        *s = (s.0 + 1, cfg);
        let _ = self.changes.send(SourceChange::Config);
    }
    fn set_endpoints(&self, name: &str, eps: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        let r = s.1.revisions.iter_mut().find(|r| r.name == name).unwrap();
        r.endpoints = eps.iter().map(|e| e.to_string()).collect();
        let _ = self.changes.send(SourceChange::Endpoints {
            namespace: "default".into(),
            name: name.into(),
        });
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, source));
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
    fn apply(&self, cfg: Config) -> Result<u64, String> {
        self.events
            .lock()
            .unwrap()
            .push(Event::Config(Box::new(cfg)));
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
async fn the_client_task_follows_the_server() {
    let source = FakeSource::new(config(2));
    let url = start(source.clone()).await;
    let sink = Arc::new(Recorder::default());
    let task = tokio::spawn(run_client(url, "t".into(), sink.clone()));

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
    for r in AdsClient::new("raw").initial_requests() {
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
            (Kind::Routes, 2, "1".to_string())
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
        error_detail: Some(xds_api::pb::google::rpc::Status {
            code: 3,
            message: "test".into(),
            details: vec![],
        }),
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
    // The whole cluster set; the new CLA and s2's (its endpoints are back); the changed
    // route configurations.
    assert_eq!(
        kinds,
        [(Kind::Cluster, 4), (Kind::Endpoints, 2), (Kind::Routes, 2)]
    );
}
