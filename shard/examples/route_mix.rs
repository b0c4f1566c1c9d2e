//! Routes N messages core 0 -> core 1 (default 100,000) and prints CPU per stanza: a
//! fixed workload for profilers (`perf record`, `valgrind --tool=callgrind`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let bench = starling_shard::bench::RouteBench::new(1000);
    let bytes = bench.client_bytes(count);
    let cpu = bench.run(bytes, count);
    println!("{count} stanzas, {:.0} ns CPU per stanza (both cores)", cpu.as_nanos() as f64 / count as f64);
}
