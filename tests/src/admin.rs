//! The control API and what the proxy exposes about itself, from a test: PUT a config or a
//! revision's endpoints, read `/v1/stats` and `/metrics`, and poll them until a condition
//! holds (tests wait on observable state, never on fixed sleeps).

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{get, new_client, Response};
use crate::metrics::{parse_metrics, Sample};
use crate::weir::Weir;

/// How often [`eventually`] and the `wait_*` helpers poll.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every 10 ms until it is true or `timeout` has passed; the last answer.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `PUT url` with a JSON body, on a fresh client.
pub async fn put_json(url: &str, body: &Value) -> Response {
    request_json(reqwest::Method::PUT, url, Some(body)).await
}

/// `method url` with an optional JSON body, on a fresh client; any answer.
pub async fn request_json(method: reqwest::Method, url: &str, body: Option<&Value>) -> Response {
    let mut req = new_client().request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e:?}"));
    Response {
        status,
        headers,
        body,
    }
}

/// `PUT /v1/{kind}/{ns}/{name}` (kind: `services`, `ingresses` or `revisions`) on the admin
/// API at `admin_url`; panics unless the answer is 200.
pub async fn put_object_at(
    admin_url: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    object: &Value,
) -> Response {
    let url = format!("{admin_url}/v1/{kind}/{namespace}/{name}");
    let r = put_json(&url, object).await;
    assert_eq!(r.status, 200, "PUT {url}: {r:?}");
    r
}

/// The first sample called `name` whose labels include all of `labels`.
pub fn find_sample<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
}

/// `PUT /v1/config` on the admin API at `admin_url` (a proxy's or a control plane's);
/// panics unless the answer is 200.
pub async fn put_config_at(admin_url: &str, config: &Value) -> Response {
    let r = put_json(&format!("{admin_url}/v1/config"), config).await;
    assert_eq!(r.status, 200, "PUT /v1/config: {r:?}");
    r
}

/// `PUT /v1/revisions/{ns}/{name}/endpoints` on the admin API at `admin_url`; panics unless
/// the answer is 200.
pub async fn put_endpoints_at(
    admin_url: &str,
    namespace: &str,
    name: &str,
    endpoints: &[String],
) -> Response {
    let url = format!("{admin_url}/v1/revisions/{namespace}/{name}/endpoints");
    let r = put_json(&url, &serde_json::json!({ "endpoints": endpoints })).await;
    assert_eq!(r.status, 200, "PUT {url}: {r:?}");
    r
}

impl Weir {
    /// `PUT /v1/config` with `config`; panics unless the answer is 200.
    pub async fn put_config(&self, config: &Value) -> Response {
        put_config_at(&self.admin_url(), config).await
    }

    /// `PUT /v1/revisions/{ns}/{name}/endpoints`; panics unless the answer is 200.
    pub async fn put_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Response {
        put_endpoints_at(&self.admin_url(), namespace, name, endpoints).await
    }

    /// `GET /v1/stats`, as JSON.
    pub async fn stats(&self) -> Value {
        let r = get(&format!("{}/v1/stats", self.admin_url()), "", &[]).await;
        assert_eq!(r.status, 200, "GET /v1/stats: {r:?}");
        r.json()
    }

    /// The `/v1/stats` entry of one revision; panics when it is missing.
    pub async fn revision_stats(&self, namespace: &str, name: &str) -> Value {
        let stats = self.stats().await;
        stats["revisions"]
            .as_array()
            .and_then(|revs| {
                revs.iter()
                    .find(|r| r["namespace"] == namespace && r["name"] == name)
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no revision {namespace}/{name} in /v1/stats: {stats}"))
    }

    /// Requests held for a revision right now (`held` in `/v1/stats`).
    pub async fn held(&self, namespace: &str, name: &str) -> u64 {
        let s = self.revision_stats(namespace, name).await;
        s["held"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric `held` in {s}"))
    }

    /// Waits until `held` of a revision is `n`; panics with the stats after `timeout`.
    pub async fn wait_held(&self, namespace: &str, name: &str, n: u64, timeout: Duration) {
        let ok = eventually(timeout, || async { self.held(namespace, name).await == n }).await;
        if !ok {
            panic!(
                "held of {namespace}/{name} is not {n} after {timeout:?}: {}",
                self.revision_stats(namespace, name).await
            );
        }
    }

    /// Every sample of `GET /metrics`.
    pub async fn metrics(&self) -> Vec<Sample> {
        let r = get(&format!("{}/metrics", self.admin_url()), "", &[]).await;
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        parse_metrics(&r.body)
    }

    /// The value of one metric sample, if present.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        find_sample(&self.metrics().await, name, labels).map(|s| s.value)
    }
}
