#!/usr/bin/env bash
# Fuzzes every parser of shared bytes (issue 13 item 5) for a bounded time.
#
#   ci/fuzz.sh [SECONDS]     (default 10 per target)
#
# Always: the stable, arbitrary-bytes targets of ipc-tests/tests/fuzz_shared.rs
# (segment header, pipe rings/frames/end slots, queue stamps/indices/frames,
# lock words), each for SECONDS; each prints its executions and seed
# (replay a failure with SHMPROC_FUZZ_SEED=<seed>).
# (A cargo-fuzz/libFuzzer crate in fuzz/ is not there yet: cargo-fuzz is not
# installed on the CI machine. Once it is, run its targets here for SECONDS.)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
SHMPROC_FUZZ_SECS="$secs" cargo test -q -p ipc-tests --test fuzz_shared -- --nocapture --test-threads=1 2>&1 \
    | grep -oE 'fuzz [a-z_]+: [0-9]+ executions.*|test result.*|panicked.*|FAILED.*'
