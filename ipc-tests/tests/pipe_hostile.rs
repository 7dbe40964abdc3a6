//! Issue 13 item 3: whatever a hostile process writes into a live pipe's
//! segment, a sender whose receiver has closed returns (Disconnected or an
//! error) within its liveness period instead of waiting forever.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipc_tests::{unique_name, wait_child};
use shmproc::pipe::RecvError;
use shmproc::Pipe;

const ROLE: &str = env!("CARGO_BIN_EXE_pipe_hostile");

fn spawn(args: &[&str]) -> Child {
    Command::new(ROLE).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn")
}

/// Reads the child's first line (its `ready`) and hands the rest of its output
/// to a thread that echoes it.
fn await_ready(c: &mut Child) {
    let mut out = BufReader::new(c.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready", "child {} did not get ready", c.id());
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            println!("child: {l}");
        }
    });
}

#[test]
fn sender_returns_after_receiver_closes_despite_a_scribbler() {
    for (seed, region) in [(1u64, "all"), (2, "slots"), (3, "zeros"), (4, "zeros")] {
        let name = unique_name("pipe-hostile");
        let a = Pipe::builder().name(&name).ring_size(4096).create().unwrap();
        // Give end A to the sender process (it claims it by name); the segment
        // clone keeps the name until the end of the round.
        let seg = a.segment().clone();
        a.hand_over();
        let mut sender = spawn(&["send", &name]);
        await_ready(&mut sender);
        let mut receiver = spawn(&["recv", &name, "1000"]);
        await_ready(&mut receiver);
        let mut scribbler = spawn(&["scribble", &name, "2000", &seed.to_string(), region]);
        assert!(wait_child(&mut receiver, Duration::from_secs(30)).success());
        // The receiver has closed its end (the scribbler goes on for another
        // second): the sender must come back, even if the scribbler rewrote
        // the end slots, the holder tables or the indices after the close.
        let st = wait_child(&mut sender, Duration::from_secs(5) + Duration::from_millis(500));
        assert!(st.success(), "sender: {st:?}");
        assert!(wait_child(&mut scribbler, Duration::from_secs(30)).success());
        drop(seg);
    }
}

/// `send_bytes_timeout` returns `Timeout` when the ring stays full, and sends
/// once there is room.
#[test]
fn send_timeout_on_a_full_ring() {
    let (a, b) = Pipe::builder().ring_size(64).pair().unwrap();
    a.send_bytes(&[7; 40]).unwrap();
    assert!(matches!(
        a.send_bytes_timeout(&[8; 40], Duration::from_millis(20)),
        Err(shmproc::pipe::SendError::Timeout)
    ));
    assert_eq!(b.recv_bytes_timeout(Duration::from_secs(5)).unwrap(), vec![7; 40]);
    a.send_timeout(&5u32, Duration::from_secs(5)).unwrap();
    assert_eq!(b.recv_timeout::<u32>(Duration::from_secs(5)).unwrap(), 5);
}

/// The holder count: a forked child holds a copy of every end it inherits, so
/// the peer is not told `Disconnected` while it lives, even after this process
/// dropped its own copy; once the child is killed (-9, no drop), the liveness
/// check discounts it and the peer hears `Disconnected`.
#[test]
fn a_forked_holder_keeps_the_end_open_until_it_is_killed() {
    let (a, b) = Pipe::new().unwrap();
    let pid = ipc_tests::fork_run(|| {
        // Holds (inherited copies of) both ends and never uses them.
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    drop(b);
    // The child still holds end B: a receive times out instead of Disconnected.
    assert!(matches!(a.recv_bytes_timeout(Duration::from_millis(200)), Err(RecvError::Timeout)));
    // SAFETY: killing our own forked child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(ipc_tests::wait_pid(pid, Duration::from_secs(30)), ipc_tests::Ended::Signal(libc::SIGKILL));
    match a.recv_bytes_timeout(Duration::from_secs(5)) {
        Err(RecvError::Disconnected) => {}
        other => panic!("expected Disconnected once the last holder died, got {other:?}"),
    }
}
