//! One weighted draw: the cost a split adds to a request.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weir_config::{Key, Split, Target};

fn split(percents: &[u32]) -> Split<u32> {
    Split::new(
        percents
            .iter()
            .enumerate()
            .map(|(i, &percent)| {
                Target::new(i as u32, &Key::new("default", &format!("rev-{i}")), percent)
            })
            .collect(),
    )
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_pick");
    for (name, percents) in [("2_targets", vec![90, 10]), ("10_targets", vec![10; 10])] {
        let s = split(&percents);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(black_box(&s).pick().revision))
        });
    }
    // The table walk alone, without the random draw.
    let s = split(&[10; 10]);
    g.bench_function("pick_with/10_targets", |b| {
        let mut r = 0u32;
        b.iter(|| {
            r = (r + 37) % 100;
            black_box(s.pick_with(black_box(r)).revision)
        })
    });
    // Header affinity: weighted rendezvous over the targets for one key (issue goal < 50 ns).
    for (name, percents) in [("2_targets", vec![90, 10]), ("10_targets", vec![10; 10])] {
        let s = split(&percents);
        let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
        g.bench_function(BenchmarkId::new("pick_by_key", name), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(s.pick_by_key(black_box(keys[i].as_bytes())).revision)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
