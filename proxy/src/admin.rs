//! The admin listener (hyper): health, readiness, metrics and the control API of
//! CONTRACT.md section 4. It runs on the control runtime, apart from the data plane's threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use weir_config::{ConfigErrors, Format};

use crate::state::{EndpointsError, State};

/// Largest request body the control API reads.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct Admin {
    pub state: Arc<State>,
    /// Bearer token every endpoint but `/healthz` requires, when set.
    pub token: Option<String>,
}

/// Whether the admin listener may bind `addr` (loopback, or any address with a token).
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve the admin API on non-loopback address {addr} without a token; \
             pass --admin-token-file or bind 127.0.0.1"
        ))
    }
}

/// Binds `addr` as soon as it is free (a binary upgrade: the process being replaced has it
/// until it exits), then serves.
pub async fn serve_when_free(addr: SocketAddr, admin: Arc<Admin>) {
    let mut said = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                log::info!("admin listener {addr} taken over");
                return serve(l, admin).await;
            }
            Err(e) => {
                if !said {
                    log::info!("admin listener {addr}: {e}; retrying until the old process exits");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accepts admin connections until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("admin connection: {e}");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn text(code: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json(code: StatusCode, v: serde_json::Value) -> Resp {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string() + "\n")))
        .expect("valid response")
}

fn errors_json(code: StatusCode, errs: &ConfigErrors) -> Resp {
    json(code, json!({ "errors": errs.0 }))
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        if !self.authorized(&req) {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Bearer")
                .body(Full::new(Bytes::from_static(
                    b"missing or wrong bearer token\n",
                )))
                .expect("valid response");
        }
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["readyz"]) => {
                if self.state.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n")
                }
            }
            (&Method::GET, ["metrics"]) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.state.metrics.render())))
                .expect("valid response"),
            (&Method::GET, ["v1", "config"]) => {
                let (generation, cfg) = self.state.config_view();
                json(
                    StatusCode::OK,
                    json!({ "generation": generation, "config": cfg }),
                )
            }
            (&Method::PUT, ["v1", "config"]) => self.put_config(req).await,
            (&Method::PUT, ["v1", "revisions", ns, name, "endpoints"]) => {
                let (ns, name) = (ns.to_string(), name.to_string());
                self.put_endpoints(req, &ns, &name).await
            }
            (&Method::GET, ["v1", "stats"]) => self.stats(),
            (
                _,
                ["readyz" | "metrics"]
                | ["v1", "config" | "stats"]
                | ["v1", "revisions", _, _, "endpoints"],
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Length-independent comparison of the whole token.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    async fn put_config(&self, req: Request<Incoming>) -> Resp {
        let dry_run = req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "dry_run=true" || p == "dry_run=1")
        });
        let yaml = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("yaml"));
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let Ok(text_body) = std::str::from_utf8(&body) else {
            return errors_json(
                StatusCode::BAD_REQUEST,
                &weir_config::ConfigError::new("", "the body is not UTF-8").into(),
            );
        };
        let format = if yaml { Format::Yaml } else { Format::Json };
        let cfg = match weir_config::load(text_body, format) {
            Ok(c) => c,
            Err(errs) => {
                self.state.metrics.config_update("api", false);
                return errors_json(StatusCode::BAD_REQUEST, &errs);
            }
        };
        if dry_run {
            return match weir_config::compile(&cfg) {
                Ok(_) => json(
                    StatusCode::OK,
                    json!({ "generation": self.state.generation(), "dry_run": true }),
                ),
                Err(errs) => errors_json(StatusCode::BAD_REQUEST, &errs),
            };
        }
        let state = self.state.clone();
        // Compiling a large config is CPU work: keep it off the admin's accept loop.
        match tokio::task::spawn_blocking(move || state.apply(cfg, "api")).await {
            Ok(Ok(generation)) => json(StatusCode::OK, json!({ "generation": generation })),
            Ok(Err(errs)) => errors_json(StatusCode::BAD_REQUEST, &errs),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("apply failed: {e}\n"),
            ),
        }
    }

    async fn put_endpoints(&self, req: Request<Incoming>, ns: &str, name: &str) -> Resp {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            endpoints: Vec<String>,
        }
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let parsed: Body = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return errors_json(
                    StatusCode::BAD_REQUEST,
                    &weir_config::ConfigError::new(
                        "",
                        format!("{e}; expected {{\"endpoints\": [\"IP:port\", ...]}}"),
                    )
                    .into(),
                )
            }
        };
        match self
            .state
            .set_endpoints(ns, name, &parsed.endpoints, "endpoints")
        {
            Ok(generation) => json(StatusCode::OK, json!({ "generation": generation })),
            Err(EndpointsError::UnknownRevision) => json(
                StatusCode::NOT_FOUND,
                json!({ "errors": [{ "path": "", "message": format!("revision {ns}/{name} is not in the config") }] }),
            ),
            Err(EndpointsError::BadAddress(errs)) => errors_json(StatusCode::BAD_REQUEST, &errs),
        }
    }

    fn stats(&self) -> Resp {
        let snap = self.state.snapshot();
        let revisions: Vec<_> = snap
            .revisions
            .iter()
            .map(|r| {
                let set = r.endpoints();
                let w = r.stats.last_window();
                json!({
                    "namespace": &*r.namespace,
                    "name": &*r.name,
                    "endpoints": set.endpoints.len(),
                    "in_flight": r.in_flight(),
                    "held": r.held(),
                    "concurrency": r.stats.concurrency(),
                    "average_concurrency": w.average_concurrency,
                    "requests": w.requests,
                    "proxied_requests": w.proxied_requests,
                })
            })
            .collect();
        json(
            StatusCode::OK,
            json!({ "generation": self.state.generation(), "revisions": revisions }),
        )
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "body over 16 MiB\n"));
        }
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(text(StatusCode::PAYLOAD_TOO_LARGE, "body over 16 MiB\n"))
            } else {
                Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("reading body: {e}\n"),
                ))
            }
        }
    }
}
