//! The admin listener (hyper): health, readiness, metrics and the admin API (docs/api.md),
//! for `weir proxy` (its [`State`]) and `weir control` (its config store) alike, through
//! [`ConfigApi`]. It runs on the admin runtime, apart from the data plane's threads.
//!
//! Besides the whole config (`GET|PUT /v1/config`), every service, ingress and revision has
//! its own endpoint, so a change costs what it changes: `GET|PUT|DELETE
//! /v1/{services,ingresses,revisions}/{namespace}/{name}`, each checked against the rest of
//! the config in force, with `?dry_run=true`.

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
use weir_config::{Change, Config, ConfigErrors, Format, Key, Kind, Update};

use crate::state::{ApplyOptions, EndpointsError, State};

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the admin API reads and changes: the proxy's state, or `weir control`'s store.
pub trait ConfigApi: Send + Sync + 'static {
    fn generation(&self) -> u64;
    /// The whole config in force and its generation.
    fn config(&self) -> (u64, Config);
    /// One object of the config in force, as JSON.
    fn object(&self, kind: Kind, key: &Key) -> Option<(u64, serde_json::Value)>;
    /// Checks and (unless `dry_run`) applies an update: the generation in force after it.
    fn update(&self, update: Update, dry_run: bool) -> Result<u64, ConfigErrors>;
    /// Replaces one revision's endpoints.
    fn set_endpoints(&self, key: &Key, endpoints: Vec<String>) -> Result<u64, EndpointsError>;
    /// A config that did not even parse (counted as a refused update).
    fn refused(&self);
    fn is_ready(&self) -> bool;
    fn metrics(&self) -> Vec<u8>;
    /// `GET /v1/stats` (the proxy's revisions at run time); `None`: not served.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }
    /// `GET /v1/status` (the status page's data); `None`: no status page.
    fn status(&self, _q: &str, _offset: usize, _limit: usize) -> Option<serde_json::Value> {
        None
    }
}

pub struct Admin {
    pub api: Arc<dyn ConfigApi>,
    /// Bearer token every endpoint but `/healthz` requires, when set.
    pub token: Option<String>,
}

/// An object of the config as JSON.
pub fn object_json(
    objects: &weir_config::Objects,
    kind: Kind,
    key: &Key,
) -> Option<serde_json::Value> {
    let v = match kind {
        Kind::Service => serde_json::to_value(&**objects.services.get(key)?),
        Kind::Ingress => serde_json::to_value(&**objects.ingresses.get(key)?),
        Kind::Revision => serde_json::to_value(&**objects.revisions.get(key)?),
    };
    v.ok()
}

impl ConfigApi for State {
    fn generation(&self) -> u64 {
        State::generation(self)
    }
    fn config(&self) -> (u64, Config) {
        self.config_view()
    }
    fn object(&self, kind: Kind, key: &Key) -> Option<(u64, serde_json::Value)> {
        let snap = self.snapshot();
        Some((
            snap.generation,
            object_json(&snap.config.objects, kind, key)?,
        ))
    }
    fn update(&self, update: Update, dry_run: bool) -> Result<u64, ConfigErrors> {
        State::update(self, update, ApplyOptions::new("api").dry_run(dry_run))
    }
    fn set_endpoints(&self, key: &Key, endpoints: Vec<String>) -> Result<u64, EndpointsError> {
        State::set_endpoints(self, &key.namespace, &key.name, &endpoints, "endpoints")
    }
    fn refused(&self) {
        self.metrics.config_update("api", false);
    }
    fn is_ready(&self) -> bool {
        State::is_ready(self)
    }
    fn metrics(&self) -> Vec<u8> {
        self.metrics.render()
    }
    fn status(&self, q: &str, offset: usize, limit: usize) -> Option<serde_json::Value> {
        Some(crate::status::status_json(self, q, offset, limit))
    }
    fn stats(&self) -> Option<serde_json::Value> {
        let snap = self.snapshot();
        let mut revs: Vec<&Arc<crate::revision::Revision>> = snap.revisions.values().collect();
        revs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let revisions: Vec<_> = revs
            .into_iter()
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
        Some(json!({ "generation": snap.generation, "revisions": revisions }))
    }
}

/// `services`, `ingresses` or `revisions` in a path.
fn kind_of(plural: &str) -> Option<Kind> {
    match plural {
        "services" => Some(Kind::Service),
        "ingresses" => Some(Kind::Ingress),
        "revisions" => Some(Kind::Revision),
        _ => None,
    }
}

fn dry_run(req: &Request<Incoming>) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "dry_run=true" || p == "dry_run=1")
    })
}

fn format_of(req: &Request<Incoming>) -> Format {
    let yaml = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    if yaml {
        Format::Yaml
    } else {
        Format::Json
    }
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
        // The status page is static HTML: it carries no data, and asks for the token (when
        // one is set) before it reads `/v1/status`, which requires it like every endpoint.
        if path == "/" && req.method() == Method::GET && self.api.status("", 0, 1).is_some() {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from_static(
                    crate::status::PAGE.as_bytes(),
                )))
                .expect("valid response");
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
                if self.api.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n")
                }
            }
            (&Method::GET, ["metrics"]) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.api.metrics())))
                .expect("valid response"),
            (&Method::GET, ["v1", "config"]) => {
                let (generation, cfg) = self.api.config();
                json(
                    StatusCode::OK,
                    json!({ "generation": generation, "config": cfg }),
                )
            }
            (&Method::PUT, ["v1", "config"]) => self.put_config(req).await,
            (&Method::PUT, ["v1", "revisions", ns, name, "endpoints"]) => {
                let key = Key::new(ns, name);
                self.put_endpoints(req, key).await
            }
            (&Method::GET, ["v1", "status"]) => {
                let query = req.uri().query().unwrap_or("");
                let param = |name: &str| {
                    query.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name).then(|| percent_decode(v))
                    })
                };
                let q = param("q").unwrap_or_default();
                let offset = param("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                let limit = param("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
                match self.api.status(&q, offset, limit) {
                    Some(v) => json(StatusCode::OK, v),
                    None => text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
            (&Method::GET, ["v1", "stats"]) => match self.api.stats() {
                Some(v) => json(StatusCode::OK, v),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            (m, ["v1", plural, ns, name]) if kind_of(plural).is_some() => {
                let kind = kind_of(plural).expect("checked");
                let key = Key::new(ns, name);
                match *m {
                    Method::GET => match self.api.object(kind, &key) {
                        Some((generation, v)) => json(
                            StatusCode::OK,
                            json!({ "generation": generation, "object": v }),
                        ),
                        None => not_in_config(kind, &key),
                    },
                    Method::PUT => self.put_object(req, kind, key).await,
                    Method::DELETE => self.delete_object(req, kind, key).await,
                    _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
                }
            }
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
        let dry_run = dry_run(&req);
        let format = format_of(&req);
        let text_body = match read_text(req).await {
            Ok(t) => t,
            Err(resp) => return resp,
        };
        let cfg = match weir_config::parse(&text_body, format) {
            Ok(c) => c,
            Err(errs) => {
                self.api.refused();
                return errors_json(StatusCode::BAD_REQUEST, &errs);
            }
        };
        self.apply(Update::whole(cfg), dry_run).await
    }

    /// `PUT /v1/{kind}/{namespace}/{name}`: the object in the body (YAML or JSON; its
    /// `name` and `namespace` may be left out), checked against the rest of the config.
    async fn put_object(&self, req: Request<Incoming>, kind: Kind, key: Key) -> Resp {
        let dry_run = dry_run(&req);
        let format = format_of(&req);
        let body = match read_text(req).await {
            Ok(t) => t,
            Err(resp) => return resp,
        };
        let (ns, name) = (&*key.namespace, &*key.name);
        let parsed = match kind {
            Kind::Service => weir_config::parse_object(&body, format, ns, name)
                .map(|o| Change::Service(key.clone(), Some(Arc::new(o)))),
            Kind::Ingress => weir_config::parse_object(&body, format, ns, name)
                .map(|o| Change::Ingress(key.clone(), Some(Arc::new(o)))),
            Kind::Revision => weir_config::parse_object(&body, format, ns, name)
                .map(|o| Change::Revision(key.clone(), Some(Arc::new(o)))),
        };
        match parsed {
            Ok(change) => self.apply(Update::Changes(vec![change]), dry_run).await,
            Err(errs) => {
                self.api.refused();
                errors_json(StatusCode::BAD_REQUEST, &errs)
            }
        }
    }

    /// `DELETE /v1/{kind}/{namespace}/{name}`: refused while a route still sends to a
    /// revision being deleted.
    async fn delete_object(&self, req: Request<Incoming>, kind: Kind, key: Key) -> Resp {
        if self.api.object(kind, &key).is_none() {
            return not_in_config(kind, &key);
        }
        let change = match kind {
            Kind::Service => Change::Service(key, None),
            Kind::Ingress => Change::Ingress(key, None),
            Kind::Revision => Change::Revision(key, None),
        };
        self.apply(Update::Changes(vec![change]), dry_run(&req))
            .await
    }

    /// Applies off the admin's accept loop (a large config is CPU work to check).
    async fn apply(&self, update: Update, dry_run: bool) -> Resp {
        let api = self.api.clone();
        match tokio::task::spawn_blocking(move || api.update(update, dry_run)).await {
            Ok(Ok(generation)) if dry_run => json(
                StatusCode::OK,
                json!({ "generation": generation, "dry_run": true }),
            ),
            Ok(Ok(generation)) => json(StatusCode::OK, json!({ "generation": generation })),
            Ok(Err(errs)) => errors_json(StatusCode::BAD_REQUEST, &errs),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("apply failed: {e}\n"),
            ),
        }
    }

    async fn put_endpoints(&self, req: Request<Incoming>, key: Key) -> Resp {
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
        let api = self.api.clone();
        let k = key.clone();
        let result =
            tokio::task::spawn_blocking(move || api.set_endpoints(&k, parsed.endpoints)).await;
        match result {
            Ok(Ok(generation)) => json(StatusCode::OK, json!({ "generation": generation })),
            Ok(Err(EndpointsError::UnknownRevision)) => not_in_config(Kind::Revision, &key),
            Ok(Err(EndpointsError::BadAddress(errs))) => {
                errors_json(StatusCode::BAD_REQUEST, &errs)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("apply failed: {e}\n"),
            ),
        }
    }
}

/// 404 for an object the config does not have.
fn not_in_config(kind: Kind, key: &Key) -> Resp {
    let what = match kind {
        Kind::Service => "service",
        Kind::Ingress => "ingress",
        Kind::Revision => "revision",
    };
    json(
        StatusCode::NOT_FOUND,
        json!({ "errors": [{ "path": "", "message": format!("{what} {key} is not in the config") }] }),
    )
}

/// The body as UTF-8 text.
async fn read_text(req: Request<Incoming>) -> Result<String, Resp> {
    let body = read_body(req).await?;
    String::from_utf8(body.to_vec()).map_err(|_| {
        errors_json(
            StatusCode::BAD_REQUEST,
            &weir_config::ConfigError::new("", "the body is not UTF-8").into(),
        )
    })
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

/// A query-string value decoded (`+` is a space, `%XX` a byte); bad escapes stay as they are.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
