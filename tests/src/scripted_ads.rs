//! A scripted ADS server for one state-of-the-world stream: the test decides every response
//! (including malformed or invalid ones no real control plane would build) and reads every
//! request the proxy sends (ACKs and NACKs). Delta streams are refused with UNIMPLEMENTED, so
//! a proxy falls back to state of the world.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use weir_control::tonic::{self, Request, Response, Status, Streaming};
use weir_control::xds::Kind;
use weir_control::xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weir_control::xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weir_control::xds_api::pb::google::protobuf::Any;

type Responses = mpsc::Receiver<Result<DiscoveryResponse, Status>>;

/// The test's end of a scripted ADS server (bound on 127.0.0.1, serving on the caller's
/// tokio runtime).
pub struct ScriptedAds {
    /// `http://127.0.0.1:PORT`, for `weir proxy --xds`.
    pub url: String,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    requests: mpsc::Receiver<DiscoveryRequest>,
}

impl ScriptedAds {
    pub async fn start() -> ScriptedAds {
        let (resp_tx, resp_rx) = mpsc::channel(16);
        let (req_tx, requests) = mpsc::channel(64);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ads = OneStream {
            stream: Mutex::new(Some((resp_rx, req_tx))),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(ads))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        ScriptedAds {
            url,
            responses: resp_tx,
            requests,
        }
    }

    /// Queues a response of `kind` carrying `items` (sent as soon as the stream is open).
    pub async fn send<M: prost::Name>(&self, kind: Kind, version: &str, nonce: &str, items: &[M]) {
        let response = DiscoveryResponse {
            version_info: version.into(),
            type_url: kind.type_url().into(),
            nonce: nonce.into(),
            resources: items.iter().map(|m| Any::from_msg(m).unwrap()).collect(),
            ..Default::default()
        };
        self.responses.send(Ok(response)).await.unwrap();
    }

    /// Reads the proxy's requests until one answers `nonce` (an ACK or a NACK); panics after
    /// `within`.
    pub async fn answer_to(&mut self, nonce: &str, within: Duration) -> DiscoveryRequest {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to nonce {nonce}"))
                .expect("the stream is open");
            if r.response_nonce == nonce {
                return r;
            }
        }
    }
}

/// Serves one stream: the first one opened gets the scripted responses.
struct OneStream {
    stream: Mutex<Option<(Responses, mpsc::Sender<DiscoveryRequest>)>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for OneStream {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let Some((responses, requests)) = self.stream.lock().unwrap().take() else {
            return Err(Status::unavailable("this test server takes one stream"));
        };
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if requests.send(r).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}
