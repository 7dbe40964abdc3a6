//! A peer that `/proc` cannot show (a `hidepid` mount hides another user's
//! processes; here an empty tmpfs over `/proc` in a private mount namespace)
//! still counts as alive while it runs: its lock is not taken over, and a
//! barrier it owes an arrival is not broken; once it has exited (even as an
//! unreaped zombie) it is dead: its lock is taken over.

use std::process::Command;
use std::time::Duration;

use ipc_tests::{run_with_timeout, unique_name, PROBE_SKIP};
use shmproc::{Barrier, Mutex};

const PROBE: &str = env!("CARGO_BIN_EXE_hidden_proc_probe");

#[test]
fn a_peer_proc_cannot_show_is_alive_while_its_pid_exists() {
    let m = Mutex::create(&unique_name("hidden-mutex"), 0u64).unwrap();
    let b = Barrier::create(&unique_name("hidden-barrier"), 2).unwrap();
    let held = m.lock().unwrap();
    let (mname, bname) = (m.segment().name().unwrap().to_owned(), b.segment().name().unwrap().to_owned());
    let caller = std::thread::spawn(move || {
        // Generation 0 with the probe; generation 1 late, after the probe
        // has looked for some 500 ms (its lock attempt takes 300 ms).
        let first = b.wait_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(800));
        (first, b.wait_timeout(Duration::from_secs(30)))
    });
    let (st, out, err) = run_with_timeout(Command::new(PROBE).args([&mname, &bname]), Duration::from_secs(60));
    drop(held);
    let (first, second) = caller.join().unwrap();
    if st.code() == Some(PROBE_SKIP) {
        println!("skipped: {}", out.trim());
        return;
    }
    assert!(st.success(), "probe failed: {st:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(first.is_ok() && second.is_ok(), "caller's waits: {first:?}, {second:?}");
}
