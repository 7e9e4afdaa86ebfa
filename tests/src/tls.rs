//! TLS and HTTP/2 from a test: a CA that issues certificates (rcgen), a rustls client that
//! trusts it and shows what the handshake negotiated (ALPN, the server's certificate), and
//! one HTTP/1.1 or HTTP/2 connection (over TLS or cleartext) to send requests on.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::client::Response;

/// No handshake or request of these helpers may take longer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate authority for one test: issues server certificates, and makes client
/// configs that trust only it.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and its key, as PEM (what the config's `tls` entries point to) and
/// the certificate as DER (what a client sees in the handshake).
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; answers their names (relative to
    /// `dir`), as written in a `tls` entry.
    pub fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let (cert, key) = (format!("{stem}.pem"), format!("{stem}.key"));
        std::fs::write(dir.join(&cert), &self.cert_pem).expect("write a certificate");
        std::fs::write(dir.join(&key), &self.key_pem).expect("write a key");
        (cert, key)
    }
}

impl TestCa {
    pub fn generate() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "Weir test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        TestCa { cert, key }
    }

    /// A server certificate for DNS names (`*.example.com` wildcards allowed), its common
    /// name the first of them; each call makes a new key and a new certificate.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign a leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client config that trusts only this CA and offers `alpn` (e.g. `["h2", "http/1.1"]`).
    pub fn client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("trust the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// Connects to `addr` and makes a TLS handshake for `server_name` (sent as SNI and checked
/// against the certificate; an IP address sends no SNI). A failed handshake is an error.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The protocol ALPN chose in a TLS session, as text.
pub fn alpn<IO>(s: &TlsStream<IO>) -> Option<String> {
    s.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The server's certificate (the first of its chain) in a TLS session, as DER.
pub fn peer_certificate<IO>(s: &TlsStream<IO>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .expect("the server sent a certificate")
}

/// The subject's common name and the DNS names of the subject alternative names.
pub fn certificate_names(der: &[u8]) -> (String, Vec<String>) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).expect("parse the certificate");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let sans = cert
        .subject_alternative_name()
        .expect("a well-formed SAN extension")
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cn, sans)
}

/// One client connection, HTTP/1.1 or HTTP/2, over any stream (TLS or TCP). Its driver runs
/// on a task of its own; requests go one after the other on the same connection.
pub enum HttpConn {
    H1(http1::SendRequest<Full<Bytes>>),
    /// With the `:scheme` to send (`https` over TLS, `http` for h2c).
    H2(http2::SendRequest<Full<Bytes>>, &'static str),
}

impl HttpConn {
    /// HTTP/1.1 over `io`.
    pub async fn http1<IO>(io: IO) -> HttpConn
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = tokio::time::timeout(IO_TIMEOUT, http1::handshake(TokioIo::new(io)))
            .await
            .expect("HTTP/1.1 handshake timed out")
            .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        HttpConn::H1(sender)
    }

    /// HTTP/2 over `io`: after ALPN `h2` on TLS (`scheme` "https"), or with prior knowledge
    /// on a cleartext connection (h2c, `scheme` "http").
    pub async fn http2<IO>(io: IO, scheme: &'static str) -> HttpConn
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(io));
        let (sender, conn) = tokio::time::timeout(IO_TIMEOUT, handshake)
            .await
            .expect("HTTP/2 handshake timed out")
            .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        HttpConn::H2(sender, scheme)
    }

    /// `GET path` for `host` (`Host` on HTTP/1.1, `:authority` on HTTP/2) on this connection:
    /// the response read whole, and the HTTP version it came in.
    pub async fn get(&mut self, host: &str, path: &str) -> io::Result<(Response, Version)> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "request timed out");
        tokio::time::timeout(IO_TIMEOUT, self.get_inner(host, path))
            .await
            .map_err(|_| timed_out())?
    }

    async fn get_inner(&mut self, host: &str, path: &str) -> io::Result<(Response, Version)> {
        let err = |e: hyper::Error| io::Error::other(e);
        let resp = match self {
            HttpConn::H1(sender) => {
                sender.ready().await.map_err(err)?;
                let req = Request::get(path)
                    .header(http::header::HOST, host)
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request");
                sender.send_request(req).await.map_err(err)?
            }
            HttpConn::H2(sender, scheme) => {
                sender.ready().await.map_err(err)?;
                let req = Request::get(format!("{scheme}://{host}{path}"))
                    .version(Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request");
                sender.send_request(req).await.map_err(err)?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(err)?.to_bytes();
        Ok((
            Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            parts.version,
        ))
    }
}
