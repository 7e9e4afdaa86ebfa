//! The cost of concurrency accounting on the request path: one `begin` and one `end` per
//! request, alone and with another thread hammering the same revision.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use weir_proxy::stats::RevisionStats;

fn stats(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats");
    let s = RevisionStats::new(Instant::now());
    g.bench_function("begin_end", |b| {
        b.iter(|| {
            black_box(&s).begin(false);
            black_box(&s).end(false);
        })
    });
    // Contended: a second thread updates the same revision meanwhile.
    let shared = Arc::new(RevisionStats::new(Instant::now()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                shared.begin(false);
                shared.end(false);
            }
        })
    };
    g.bench_function("begin_end_contended", |b| {
        b.iter(|| {
            shared.begin(false);
            shared.end(false);
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

criterion_group!(benches, stats);
criterion_main!(benches);
