//! Frames the benchmark's stanza mix N times (default 200): a fixed workload for
//! instruction counts, which do not drift on a shared machine like wall time does:
//! `valgrind --tool=callgrind target/release/examples/frame_mix 20`.

include!("../benches/mix.rs");

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(200);
    let bytes = stanza_mix();
    let frames: usize = (0..rounds).map(|_| frame_all(std::hint::black_box(&bytes))).sum();
    println!("{} bytes x {rounds} rounds, {frames} frames", bytes.len());
}
