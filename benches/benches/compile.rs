//! Validating and compiling an already parsed config into a RouteTable: the cost of every
//! config update (file, SIGHUP, API, xDS), paid off the request path.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weir_benches::services_config;

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    for services in [1_000, 10_000, 100_000] {
        // Keep short runs (`--measurement-time 2`) within their time on two cores.
        g.sample_size(match services {
            s if s >= 100_000 => 10,
            s if s >= 10_000 => 20,
            _ => 100,
        });
        let cfg = services_config(services);
        g.bench_with_input(BenchmarkId::new("services", services), &cfg, |b, cfg| {
            // The old table's drop happens elsewhere in the proxy; keep it out of the figure.
            b.iter_with_large_drop(|| weir_config::compile(black_box(cfg)).expect("valid"))
        });
    }
    g.finish();
}

/// Validation alone, to tell its share of `compile` from building the table.
fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate");
    g.sample_size(20);
    let cfg = services_config(10_000);
    g.bench_with_input(BenchmarkId::new("services", 10_000), &cfg, |b, cfg| {
        b.iter(|| weir_config::validate(black_box(cfg)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, compile, validate);
criterion_main!(benches);
