//! What a proxy's config costs in memory at N services, part by part, the way `weir proxy
//! --xds` builds it: the resources `weir control` serves are fed to the real ADS client
//! state machine (delta), and the config it hands out is applied through the real sink to a
//! real proxy state.
//!
//! `config_mem 10000 100000` runs each N in a fresh child process and prints a markdown
//! table: bytes live on the heap (counted by this binary's allocator, mimalloc underneath as
//! in `weir`) held by the xDS client's store, by the proxy state (objects, route table,
//! run-time revisions), and the process RSS at the end.

// A counting allocator is `unsafe` by nature (GlobalAlloc); it only forwards to mimalloc.
// This is a measurement tool, not part of `weir`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use weir_benches::services_config;
use weir_control::xds::{DeltaClient, Kind, Update, XdsSink};
use weir_control::xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use weir_control::xds_api::pb::google::protobuf::Any;

/// mimalloc, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to mimalloc unchanged; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() -> ExitCode {
    weir_benches::run_probe(
        "config_mem",
        &[
            "| services | xDS client store | proxy state | of which run-time revisions | apply ms | RSS at the end |",
            "|---:|---:|---:|---:|---:|---:|",
        ],
        &[10_000, 100_000],
        child,
    )
}

fn resource<M: prost::Name>(name: String, m: &M) -> Resource {
    Resource {
        name,
        version: "1".into(),
        resource: Some(Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn response(kind: Kind, nonce: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        resources,
        ..Default::default()
    }
}

/// One measurement, in a process of its own.
fn child(n: usize) {
    let cfg = services_config(n);
    // What `weir control` serves: one RouteConfiguration per service and visibility, a
    // Cluster and a ClusterLoadAssignment per revision.
    let (mut routes, mut clusters, mut clas) = (Vec::new(), Vec::new(), Vec::new());
    for s in &cfg.services {
        for rc in weir_control::translate::service_routes(&cfg, s)
            .into_iter()
            .flatten()
        {
            routes.push(resource(rc.name.clone(), &rc));
        }
    }
    for r in &cfg.revisions {
        let (c, e) = weir_control::translate::revision_resources(&cfg, r);
        clusters.push(resource(c.name.clone(), &c));
        clas.push(resource(e.cluster_name.clone(), &e));
    }
    let settings = weir_config::objects::settings_of(cfg.clone()).0;
    drop(cfg);

    if std::env::var_os("CONFIG_MEM_PARTS").is_some() {
        parts(&routes, &clusters, &clas, &settings);
        return;
    }

    let before_client = live();
    let mut client = DeltaClient::new("config-mem");
    let mut config = None;
    for (kind, res) in [
        (Kind::Cluster, clusters),
        (Kind::Endpoints, clas),
        (Kind::Routes, routes),
    ] {
        let out = client.on_response(response(kind, "1", res));
        if let Some(Update::Config(c)) = out.update {
            config = Some(*c);
        }
    }
    let config = config.expect("the first sync completes");
    let after_client = live();

    let state = weir_proxy::server::new_state();
    let sink = weir_proxy::xds::StateSink::new(state.clone());
    let started = Instant::now();
    sink.apply(config).expect("the config applies");
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    let after_state = live();
    // The run-time revisions' share: what dropping them (and nothing else) frees.
    let revisions: Vec<Arc<weir_proxy::revision::Revision>> =
        state.snapshot().revisions.values().cloned().collect();
    let one = std::mem::size_of::<weir_proxy::revision::Revision>();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    println!(
        "| {n} | {} | {} | {} ({} B each, inline) | {apply_ms:.0} | {} MiB |",
        mib(after_client - before_client),
        mib(after_state - after_client),
        mib((revisions.len() * one) as isize),
        one,
        rss / 1024,
    );
    drop(revisions);
    drop((client, sink, state));
}

/// The client store's parts, one by one (`CONFIG_MEM_PARTS=1`).
fn parts(
    routes: &[Resource],
    clusters: &[Resource],
    clas: &[Resource],
    _settings: &weir_config::Config,
) {
    use weir_control::translate::from_xds;
    use weir_control::xds_api::pb::envoy::config::cluster::v3::Cluster;
    use weir_control::xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use weir_control::xds_api::pb::envoy::config::route::v3::RouteConfiguration;
    let decode = |r: &Resource| r.resource.as_ref().expect("a resource").value.clone();
    let l0 = live();
    let sets: std::collections::BTreeMap<String, from_xds::RouteSet> = routes
        .iter()
        .map(|r| {
            let rc: RouteConfiguration = prost::Message::decode(decode(r).as_slice()).unwrap();
            (rc.name.clone(), from_xds::route_set(&rc).unwrap())
        })
        .collect();
    let l1 = live();
    let specs: std::collections::BTreeMap<String, from_xds::ClusterSpec> = clusters
        .iter()
        .map(|r| {
            let c: Cluster = prost::Message::decode(decode(r).as_slice()).unwrap();
            (c.name.clone(), from_xds::cluster_spec(&c).unwrap().unwrap())
        })
        .collect();
    let eds: std::collections::BTreeMap<String, Vec<String>> = clas
        .iter()
        .map(|r| {
            let c: ClusterLoadAssignment = prost::Message::decode(decode(r).as_slice()).unwrap();
            (c.cluster_name.clone(), from_xds::endpoints(&c).unwrap())
        })
        .collect();
    let l2 = live();
    let composed = from_xds::compose(&sets, &specs, &eds, &from_xds::Composed::default()).unwrap();
    let l3 = live();
    println!(
        "route sets {}, clusters and endpoints {}, composed {}",
        mib(l1 - l0),
        mib(l2 - l1),
        mib(l3 - l2)
    );
    drop((sets, specs, eds, composed));
}

fn mib(b: isize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}
