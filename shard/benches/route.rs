//! CPU per routed stanza, core to core (target: at most 1 µs of CPU per stanza,
//! excluding socket syscalls): framing the sender's bytes, handling and stamping each
//! message, routing it to the recipient's home core over the core channel in
//! batches, and delivering it into the recipient's mailbox. The time reported is the
//! CPU both cores spent, per stanza.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use starling_shard::bench::RouteBench;

fn route(c: &mut Criterion) {
    let bench = RouteBench::new(1000);
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("message, core 0 to core 1 (CPU of both cores)", |b| {
        b.iter_custom(|iterations| bench.measure(iterations))
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
