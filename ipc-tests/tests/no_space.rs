//! Issue 13 item 1: a shared-memory tmpfs without room fails at create with
//! `OpenError::NoSpace`, never a SIGBUS at first touch.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use ipc_tests::run_probe;
use shmproc::{OpenError, Segment};

const PROBE: &str = env!("CARGO_BIN_EXE_no_space_probe");

/// In a private mount namespace with a 16 MiB `/dev/shm`: a 64 MiB array, a
/// 32 MiB queue and a pipe of two 32 MiB rings fail with NoSpace; small ones work.
#[test]
fn full_dev_shm_is_no_space_not_sigbus() {
    let Some((st, out, err)) = run_probe(PROBE, Duration::from_secs(60)) else { return };
    assert_eq!(
        st.signal(),
        None,
        "probe killed by signal {:?} (SIGBUS is 7)\nstdout:\n{out}\nstderr:\n{err}",
        st.signal()
    );
    assert!(st.success(), "probe failed: {st:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("small objects work"), "{out}");
}

/// An anonymous object larger than all memory and swap fails at create with
/// NoSpace instead of being created and faulting later.
#[test]
fn anonymous_too_large_for_memory_is_no_space() {
    let huge = 1usize << 46; // 64 TiB
    match Segment::builder().size(huge).create() {
        Err(OpenError::NoSpace { requested, available }) => {
            assert!(requested >= huge as u64);
            assert!(available < huge as u64);
        }
        other => panic!("expected NoSpace, got {:?}", other.map(|_| ())),
    }
}
