#!/usr/bin/env bash
# Runs every fuzz target of this project for FUZZ_SECONDS seconds each (default 30).
# Installs the nightly toolchain and cargo-fuzz when they are missing.
# Extra arguments are passed to libFuzzer, e.g. `fuzz/run.sh -jobs=2`.
# Seed corpora of the proto_* targets: `cargo test -p vhost-proto --test fuzz_corpus -- --ignored`.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=$(cargo +nightly fuzz list)
if [ -z "$targets" ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

failed=()
for t in $targets; do
    echo "=== $t: ${seconds}s"
    mkdir -p "corpus/$t"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" "$@"; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz targets with crashes: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash"
