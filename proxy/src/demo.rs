//! `weir demo`: a proxy plus built-in sample revisions on loopback, to see host routing, tags,
//! a weighted split, path rules and scale from zero with nothing but curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::server::{self, ProxyOptions};
use crate::state::State;

/// How long the scaled-to-zero revision takes to "start" after its first request.
const COLD_START: Duration = Duration::from_secs(2);

const CONFIG: &str = r#"
domain: example.com
tag_header_routing: true
drain_timeout: 5s
services:
  - name: hello
    namespace: default
    traffic:
      - {revision: hello-00001, percent: 90, tag: current}
      - {revision: hello-00002, percent: 10, tag: candidate}
  - name: sleepy
    namespace: default
    traffic:
      - {revision: sleepy-00001, percent: 100}
ingresses:
  - name: api
    namespace: default
    rules:
      - hosts: [api.example.com]
        paths:
          - path: /v2
            append_headers: {x-api-version: "2"}
            splits: [{revision: hello-00002, percent: 100}]
          - path: ""
            splits: [{revision: hello-00001, percent: 100}]
revisions:
  - {name: hello-00001, namespace: default, endpoints: ["ENDPOINT_1"]}
  - {name: hello-00002, namespace: default, endpoints: ["ENDPOINT_2"]}
  - {name: sleepy-00001, namespace: default, container_concurrency: 1, endpoints: []}
"#;

pub fn run(http: SocketAddr, admin: SocketAddr, threads: usize) -> ExitCode {
    let rt = match server::admin_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (a1, a2) = match rt.block_on(async {
        Ok::<_, std::io::Error>((backend("hello-00001").await?, backend("hello-00002").await?))
    }) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: starting the demo backends: {e}");
            return ExitCode::from(1);
        }
    };
    let text = CONFIG
        .replace("ENDPOINT_1", &a1.to_string())
        .replace("ENDPOINT_2", &a2.to_string());
    let config = weir_config::parse_yaml(&text).expect("the demo config is valid");
    let state = server::new_state();
    rt.spawn(cold_start(state.clone()));

    let p = http.port();
    println!(
        r#"
Weir demo: proxy on http://{http}, admin on http://{admin}
  live status page (routes, splits, held requests, concurrency): http://{admin}/
  revisions hello-00001 on {a1}, hello-00002 on {a2}, sleepy-00001 scaled to zero

Try:
  # host routing with a 90/10 split (run it a few times)
  curl -s -H 'Host: hello.default.example.com' http://127.0.0.1:{p}/
  # tag hosts: always one revision
  curl -s -H 'Host: current-hello.default.example.com' http://127.0.0.1:{p}/
  curl -s -H 'Host: candidate-hello.default.example.com' http://127.0.0.1:{p}/
  # tag header routing on the default host
  curl -s -H 'Host: hello.default.example.com' -H 'Knative-Serving-Tag: candidate' http://127.0.0.1:{p}/
  # path rules of an ingress
  curl -s -H 'Host: api.example.com' http://127.0.0.1:{p}/v2/users
  # scale from zero: held until the revision "starts" ({cold}s), then answered
  time curl -s -H 'Host: sleepy.default.example.com' http://127.0.0.1:{p}/
  # unknown host
  curl -si -H 'Host: nope.example.com' http://127.0.0.1:{p}/
  # the split over 1000 requests
  for i in $(seq 1000); do curl -s -H 'Host: hello.default.example.com' http://127.0.0.1:{p}/; done | sort | uniq -c
  # state, config and metrics
  curl -s http://{admin}/v1/stats; curl -s http://{admin}/v1/config; curl -s http://{admin}/metrics | grep weir_
Ctrl-C stops everything.
"#,
        cold = COLD_START.as_secs()
    );
    server::run(
        ProxyOptions {
            config_path: None,
            config,
            listeners: server::Listeners {
                http: vec![http],
                ..Default::default()
            },
            config_dir: PathBuf::from("."),
            admin,
            admin_token: None,
            threads,
            autoscaler_url: None,
            pod_name: "weir-demo".into(),
            xds: None,
            upgrade: false,
            fast_path: true,
            upgrade_sock: server::default_upgrade_sock(),
        },
        &rt,
        state,
    )
}

/// Starts `sleepy-00001` the first time a request is held for it, after [`COLD_START`].
async fn cold_start(state: Arc<State>) {
    loop {
        let held = state
            .snapshot()
            .revisions
            .get(&weir_config::Key::new("default", "sleepy-00001"))
            .map_or(0, |r| r.held());
        if held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "demo: a request is held for sleepy-00001; starting it ({}s cold start)",
        COLD_START.as_secs()
    );
    tokio::time::sleep(COLD_START).await;
    match backend("sleepy-00001").await {
        Ok(addr) => {
            match state.set_endpoints("default", "sleepy-00001", &[addr.to_string()], "demo") {
                Ok(g) => println!(
                    "demo: sleepy-00001 is up on {addr} (generation {g}); held requests released"
                ),
                Err(e) => eprintln!("demo: publishing sleepy-00001: {e:?}"),
            }
        }
        Err(e) => eprintln!("demo: starting sleepy-00001: {e}"),
    }
}

/// A sample revision on a loopback port: answers `hello from <name>` with what it was sent.
async fn backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let body = format!(
                        "hello from {name} (path {}, tag {}, x-api-version {})\n",
                        req.uri().path(),
                        h("knative-serving-tag"),
                        h("x-api-version"),
                    );
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-revision", name)
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(body)))
                            .expect("valid response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
