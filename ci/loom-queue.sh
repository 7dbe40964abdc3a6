#!/usr/bin/env bash
# Model-checks the queue's ring algorithm (MPMC claims/recovery and SPSC) with
# loom, on the heap twin of the segment (src/queue/ring.rs, `loom_tests`).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
exec cargo test --release -p shmproc --lib --target-dir target/loom -- queue::ring::loom_tests "$@"
