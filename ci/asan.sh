#!/usr/bin/env bash
# AddressSanitizer over the library's unit tests and the multi-process ipc-tests.
# Needs the nightly toolchain (`rustup toolchain list` shows it on our machines).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "asan: no nightly toolchain; skipped"
    exit 0
fi
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=0"
# A separate target dir: sanitizer builds must not mix with normal ones.
cargo +nightly test --target x86_64-unknown-linux-gnu --target-dir target/asan --workspace --lib --tests "$@"
