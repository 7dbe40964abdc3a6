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
# allocator_may_return_null: sizes that come from another process are
# reserved with try_reserve and must fail as errors (read_fd_all's test asks
# for 1 PiB); by default ASan aborts on any allocation that large instead.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
# Tests that bound memory (the pool's endless imap) skip the bound under ASan:
# its quarantine keeps freed memory resident.
export SHMPROC_UNDER_ASAN=1
# A separate target dir: sanitizer builds must not mix with normal ones.
# The library and the multi-process tests. The command's crate (its raw
# baselines and the peer crates behind its default `peers` feature) is left out:
# building iceoryx2 and ipc-channel under ASan would double CI's build time.
cargo +nightly test --target x86_64-unknown-linux-gnu --target-dir target/asan --workspace --exclude shmproc-cli \
    --lib --tests "$@"
