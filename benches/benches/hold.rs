//! Hold and release: 10,000 requests wait for a revision at zero; one endpoint update with
//! unlimited concurrency releases them. Measures the time from the update to the last
//! request holding its slot (the release itself, not the HTTP round trips).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weir_config::model::Protocol;
use weir_proxy::revision::{Revision, Settings, Shared};

const HELD: usize = 10_000;

fn settings() -> Settings {
    Settings {
        container_concurrency: 0,
        timeout: Duration::from_secs(60),
        protocol: Protocol::Http1,
        queue_depth: HELD,
        held_memory: u64::MAX,
        poke_interval: Duration::from_secs(1),
    }
}

/// Holds `HELD` acquisitions, then times one `update` until all have their slot.
async fn hold_and_release() -> Duration {
    let rev = Revision::new("default", "bench", settings(), &Shared::default());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        let rev = rev.clone();
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let slot = rev.acquire(&[], 0).await.expect("released");
            let _ = done.send(Instant::now());
            drop(slot);
        }));
    }
    while rev.held() < HELD {
        tokio::task::yield_now().await;
    }
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let start = Instant::now();
    rev.update(&[addr], settings());
    let mut last = start;
    for _ in 0..HELD {
        last = done_rx.recv().await.expect("all release");
    }
    for t in tasks {
        let _ = t.await;
    }
    last - start
}

fn hold(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("hold");
    g.sample_size(10);
    g.bench_function("release_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(hold_and_release());
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, hold);
criterion_main!(benches);
