//! The `route` benchmark of starling-shard through the feature modules: the same
//! message path (framer, stanza handling, stamping, router, core channel, delivery),
//! with every module's hooks on it, `mod_mam` off (its writes are the archive
//! benchmarks' subject). The difference from `cargo bench -p starling-shard --bench
//! route` is what the module interface and the modules cost per message. No storage
//! is touched on this path (the recipients are online); the store is unreachable.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use starling_modules::store::Store;
use starling_shard::bench::RouteBench;
use starling_shard::db::{DbPool, StoreError, StoreFactory};

fn route(c: &mut Criterion) {
    let factory: Arc<StoreFactory<dyn Store>> = Arc::new(|| Err(StoreError::Unavailable("benchmark".into())));
    let (db, threads) = DbPool::start(1, 4, factory);
    let mut config = starling_modules::Config::all();
    config.mam = None;
    let modules = starling_modules::build(config, db.clone());
    let bench = RouteBench::with_modules(1000, modules, Arc::new(db), threads);
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("message through the modules (mam off), core 0 to core 1 (CPU of both cores)", |b| {
        b.iter_custom(|iterations| bench.measure(iterations))
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
