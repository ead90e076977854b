//! See `benches/micro.rs` (microbenchmarks, `cargo bench -p tunnel-benches`)
//! and `src/bin/load.rs` (the end-to-end load harness,
//! `cargo run --release -p tunnel-benches --bin load`).
#![forbid(unsafe_code)]
