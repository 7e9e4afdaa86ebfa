//! The status prober as net-kourier runs it (networking `pkg/status`, Kourier's
//! `pkg/reconciler/ingress/lister.go`): for every rule of a KIngress it dials each gateway
//! pod directly, on the probe port of the rule's kind, and sends
//! `GET http(s)://<host>/healthz` with `K-Network-Probe: probe`, `K-Network-Hash: override`
//! and `User-Agent: Knative-Ingress-Probe` (over TLS: SNI = the host, no verification). The
//! ingress is ready when every pod answered every probe with success:
//!
//! | answer | verdict |
//! |---|---|
//! | 200 with `K-Network-Hash` equal to the ingress's hash | success |
//! | 200 with another hash | retry |
//! | 200 without the header | success ("abandoned") |
//! | 404 or 503, or no connection | retry |
//! | anything else (a 301 redirect) | success ("abandoned") |
//!
//! Ports: external rules on 8090 (plain) and, when the ingress has TLS, 9443; cluster-local
//! rules on 8081 and, with TLS, 8444. Each probe times out after 1 s; retries back off from
//! 50 ms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{GatewayPorts, KIngress, Visibility};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The expected hash.
    Ready,
    /// A success that does not prove the hash (no header, or an answer other than 200, 404
    /// and 503).
    Abandoned(u16),
    /// Try again: another hash, 404/503, or no answer.
    Retry(String),
}

/// One probe target: where to dial, the host, TLS or not.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub tls: bool,
}

/// Every target of `ing` on one gateway pod.
pub fn targets(ing: &KIngress, pod: &GatewayPorts) -> Vec<Target> {
    let tls = !ing.tls.is_empty();
    let mut out = Vec::new();
    for rule in &ing.rules {
        let (plain, secure) = match rule.visibility {
            Visibility::ExternalIP => (pod.probe, pod.probe_https),
            Visibility::ClusterLocal => (pod.internal, pod.internal_https),
        };
        for host in &rule.hosts {
            out.push(Target {
                addr: plain,
                host: host.clone(),
                tls: false,
            });
            if tls {
                out.push(Target {
                    addr: secure,
                    host: host.clone(),
                    tls: true,
                });
            }
        }
    }
    out
}

/// One probe of one target, as the prober sends it.
pub async fn probe(t: &Target, hash: &str) -> Verdict {
    match tokio::time::timeout(Duration::from_secs(1), send(t)).await {
        Err(_) => Verdict::Retry("timed out".into()),
        Ok(Err(e)) => Verdict::Retry(e),
        Ok(Ok((status, got))) => match status {
            200 => match got {
                Some(h) if h == hash => Verdict::Ready,
                Some(h) => Verdict::Retry(format!("hash {h}, want {hash}")),
                None => Verdict::Abandoned(200),
            },
            404 | 503 => Verdict::Retry(format!("status {status}")),
            other => Verdict::Abandoned(other),
        },
    }
}

async fn send(t: &Target) -> Result<(u16, Option<String>), String> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    let req = http::Request::get("/healthz")
        .header("host", &t.host)
        .header("user-agent", "Knative-Ingress-Probe")
        .header("k-network-probe", "probe")
        .header("k-network-hash", "override")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if t.tls {
        let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(insecure())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        request(TokioIo::new(tls), req).await?
    } else {
        request(TokioIo::new(tcp), req).await?
    };
    Ok(resp)
}

async fn request<IO>(
    io: IO,
    req: http::Request<Empty<bytes::Bytes>>,
) -> Result<(u16, Option<String>), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let hash = resp
        .headers()
        .get("k-network-hash")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = resp.into_body().collect().await;
    Ok((status, hash))
}

/// The prober's TLS: SNI is the host, the certificate is not verified
/// (`InsecureSkipVerify`).
fn insecure() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Any))
    .with_no_client_auth();
    Arc::new(config)
}

/// Probes every target of `ing` on every pod until all succeed or `timeout` passes (retry
/// backoff from 50 ms, doubling, at most 1 s). `Ok` with the verdicts, or `Err` naming the
/// targets that never succeeded and why.
pub async fn wait_ready(
    ing: &KIngress,
    hash: &str,
    pods: &[GatewayPorts],
    timeout: Duration,
) -> Result<Vec<Verdict>, String> {
    let deadline = Instant::now() + timeout;
    let targets: Vec<Target> = pods.iter().flat_map(|p| targets(ing, p)).collect();
    let mut done: Vec<Option<Verdict>> = vec![None; targets.len()];
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut last = Vec::new();
        for (t, slot) in targets.iter().zip(done.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match probe(t, hash).await {
                Verdict::Retry(why) => {
                    last.push(format!("{} {} tls={}: {why}", t.addr, t.host, t.tls))
                }
                v => *slot = Some(v),
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            return Err(last.join("; "));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
