#!/usr/bin/env bash
# Build every cargo-fuzz target and run each for SECONDS (bounded), failing if any crash,
# panic, timeout or OOM is found.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# New inputs go to fuzz/work/<target>/ (ignored by git); the committed seeds in
# fuzz/corpus/<target>/ are only read. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ || $1 -lt 1 ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz and a nightly toolchain are required: cargo install cargo-fuzz; rustup toolchain install nightly" >&2
    exit 2
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets: ${targets[*]}"
for t in "${targets[@]}"; do
    timeout 3600 cargo +nightly fuzz build "$t"
done

failed=()
for t in "${targets[@]}"; do
    work="fuzz/work/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$work" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== fuzzing $t for ${seconds}s"
    status=0
    # Hard bound: the run itself plus slack for loading the corpus.
    timeout --signal=INT --kill-after=30 $((seconds + 120)) \
        cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ||
        status=$?
    after=$(find "$artifacts" -type f | wc -l)
    if [[ $status -ne 0 || $after -gt $before ]]; then
        echo "!! $t: exit status $status, new artifacts in $artifacts:" >&2
        ls -t "$artifacts" | head -n 5 >&2 || true
        failed+=("$t")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "OK: ${targets[*]} ran ${seconds}s each without a crash"
