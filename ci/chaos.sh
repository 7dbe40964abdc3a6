#!/usr/bin/env bash
# Kill -9 loops for every primitive (issue 13 item 6): the queue
# (ipc-tests/tests/queue_ipc.rs: chaos_kill_random_participants), the pipe, the
# robust mutex and the barrier (ipc-tests/tests/chaos.rs). Each prints one line
# "chaos <primitive>: rounds, messages, lost (bound), duplicated, torn, hangs"
# and fails unless duplicated, torn and hangs are 0 and lost is within bound.
#
#   ci/chaos.sh [ROUNDS]     (default 200)
#
# The pool's loop (ipc-tests/tests/pool.rs: chaos) kills a random worker every
# few milliseconds during a map of 20,000 items; its rounds are 50 x
# SHMPROC_POOL_TEST_SCALE, so ROUNDS is rounded up to a multiple of 50.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-200}"
export SHMPROC_CHAOS_ROUNDS="$rounds"
# pipefail: a failing cargo fails the script even though grep filters its output.
cargo test -q -p ipc-tests --test queue_ipc chaos_kill_random_participants -- --nocapture 2>&1 \
    | grep -oE 'chaos[ :].*|test result.*|panicked.*|FAILED.*'
cargo test -q -p ipc-tests --test chaos -- --nocapture --test-threads=1 2>&1 \
    | grep -oE 'chaos[ :].*|test result.*|panicked.*|FAILED.*'
# A failed assertion's message is on the line after "panicked at": keep it.
SHMPROC_POOL_TEST_SCALE=$(( (rounds + 49) / 50 )) cargo test -q -p ipc-tests --test pool -- chaos 2>&1 \
    | grep -E -A1 'chaos[ :]|test .*chaos|panicked|FAILED|pool: '
