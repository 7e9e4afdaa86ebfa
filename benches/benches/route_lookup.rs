//! The per-request routing work: Host lookup in tables of growing size, and the whole
//! decision (lookup, path rule, split draw, revision).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weir_benches::{hit_hosts, services_config, services_for_hosts};
use weir_config::{compile, Listener};

/// Enough distinct Host values that a large table is not served from a warm cache line.
const SAMPLES: usize = 8192;

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for hosts in [10, 10_000, 100_000] {
        let services = services_for_hosts(hosts);
        let table = compile(&services_config(services)).expect("generated config is valid");
        let real_hosts = table.host_count();
        let hits = hit_hosts(services, SAMPLES, 42);
        g.bench_with_input(BenchmarkId::new("hit", real_hosts), &hits, |b, hits| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % hits.len();
                let r = table.lookup(black_box(&hits[i]), Listener::External);
                debug_assert!(matches!(r, Ok(Some(_))));
                black_box(r.is_ok_and(|r| r.is_some()))
            })
        });
        g.bench_function(BenchmarkId::new("miss", real_hosts), |b| {
            let miss: &[u8] = b"No-Such-Service.Default.Example.com:8080";
            b.iter(|| {
                let r = table.lookup(black_box(miss), Listener::External);
                black_box(r.is_ok_and(|r| r.is_some()))
            })
        });
    }
    g.finish();
}

fn decision(c: &mut Criterion) {
    let services = services_for_hosts(10_000);
    let table = compile(&services_config(services)).expect("generated config is valid");
    let hits = hit_hosts(services, SAMPLES, 43);
    c.bench_function("route_decision/10000", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % hits.len();
            let host = table
                .lookup(black_box(&hits[i]), Listener::External)
                .ok()
                .flatten()
                .expect("hit");
            let path = host
                .route(black_box(b"/api/v1/items?id=7"), |_| None)
                .expect("catch-all");
            let target = path.split.pick();
            black_box(target.name.len())
        })
    });
}

criterion_group!(benches, lookup, decision);
criterion_main!(benches);
