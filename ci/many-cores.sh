#!/usr/bin/env bash
# Scaling figures on a machine with many CPUs (not part of CI): the pool from 1
# worker up to every CPU (examples/pool_scaling.rs), then one full
# `shmproc bench` (its `stream-mpmc` case runs one producer per CPU beyond the
# consumer's: queue contention), with a plot.
#
#   ci/many-cores.sh [BIN_DIR] [OUT_DIR]
#
# BIN_DIR holds `shmproc` and `pool_scaling` built elsewhere (for a machine
# without a toolchain); without it, both are built here. OUT_DIR (default
# ./many-cores-out) receives pool_scaling.txt, bench.txt, bench.svg, machine.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
out=${2:-many-cores-out}
mkdir -p "$out"
if [ -z "$bin" ]; then
    cargo build --release -q -p shmproc-cli && cargo build --release -q --example pool_scaling || exit 1
    bin=target/release
    cp target/release/examples/pool_scaling "$bin/pool_scaling.tmp" && mv "$bin/pool_scaling.tmp" "$bin/pool_scaling"
fi
bin=$(cd "$bin" && pwd)
{
    date -u
    uname -r
    lscpu | grep -E 'Model name|^CPU\(s\)|Thread\(s\)|Core\(s\)|Socket\(s\)|NUMA node'
    cat /proc/loadavg
    python3 --version 2>&1 || true
} > "$out/machine.txt"
cat "$out/machine.txt"
echo "== pool scaling"
timeout 180 "$bin/pool_scaling" 2>&1 | tee "$out/pool_scaling.txt"
echo "== shmproc bench (full)"
timeout 420 "$bin/shmproc" bench --plot "$out/bench.svg" 2>&1 | tee "$out/bench.txt"
ls -A /dev/shm | grep -c '^shmproc' || true
