//! Framer throughput on a realistic stanza mix (target: at least 1 GB/s per core of
//! well-formedness checking). Input arrives in 16 KiB reads, as from a socket.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use starling_wire::stanza::Stanza;

include!("mix.rs");

fn framer(c: &mut Criterion) {
    let bytes = stanza_mix();
    let mut group = c.benchmark_group("framer");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("stanza mix, 16 KiB reads", |b| b.iter(|| frame_all(std::hint::black_box(&bytes))));
    group.finish();

    // The per-stanza work a routed stanza adds after framing: head parse and stamp.
    let message =
        b"<message to='bob@localhost' id='m1' type='chat'><body>Hey, are we still on for lunch?</body></message>";
    let mut group = c.benchmark_group("stanza");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse head and stamp from", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            let stanza = Stanza::parse(std::hint::black_box(message)).unwrap();
            stanza.write_stamped("alice@localhost/phone", &mut out);
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, framer);
criterion_main!(benches);
