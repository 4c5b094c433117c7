//! Benchmarks for the workspace live under `benches/`; this library is empty.
