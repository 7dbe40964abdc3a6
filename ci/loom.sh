#!/usr/bin/env bash
# Exhaustively checks the raw robust mutex, the semaphore and the event, and
# the sleeper/waker handshakes of the queue and the pipe (src/wait.rs: a lost
# wake-up shows up as a loom deadlock) with loom, on heap twins of their
# shared state (src/sync/loom_tests.rs).
# Uses a separate target dir so the cfg(loom) build does not evict the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --release -p shmproc --lib sync::loom_tests -- --test-threads=1 "$@"
