#!/usr/bin/env bash
# Kill -9 loops for every primitive (issue 13 item 6): the queue
# (ipc-tests/tests/queue_ipc.rs: chaos_kill_random_participants), the pipe, the
# robust mutex and the barrier (ipc-tests/tests/chaos.rs). Each prints one line
# "chaos <primitive>: rounds, messages, lost (bound), duplicated, torn, hangs"
# and fails unless duplicated, torn and hangs are 0 and lost is within bound.
#
#   ci/chaos.sh [ROUNDS]     (default 200)
#
# The pool joins once src/pool exists: add its test to ipc-tests/tests/chaos.rs
# (chaos_pool) and it runs here with the others.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-200}"
export SHMPROC_CHAOS_ROUNDS="$rounds"
# pipefail: a failing cargo fails the script even though grep filters its output.
cargo test -q -p ipc-tests --test queue_ipc chaos_kill_random_participants -- --nocapture 2>&1 \
    | grep -oE 'chaos[ :].*|test result.*|panicked.*|FAILED.*'
cargo test -q -p ipc-tests --test chaos -- --nocapture --test-threads=1 2>&1 \
    | grep -oE 'chaos[ :].*|test result.*|panicked.*|FAILED.*'
