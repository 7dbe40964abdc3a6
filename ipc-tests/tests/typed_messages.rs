//! Typed messages across real processes (issue 10 item 3): any serde type
//! through a typed queue and a pipe; receiving the wrong type is
//! `TypeMismatch`, never a silent misdecode.

use std::time::Duration;

use shmproc::pipe::RecvError;
use shmproc::{FrameQueue, Pipe, Process, TypedRecvError};

const T: Duration = Duration::from_secs(30);

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
enum Task {
    Resize { w: u32, h: u32 },
    Say(String),
    Stop,
}

#[test]
fn typed_queue_carries_enums_from_a_child_and_ends() {
    let (tx, rx) = shmproc::queue::typed_channel::<Task>(16).unwrap();
    let mut child = Process::closure(move || {
        for i in 0..100u32 {
            tx.send(Task::Resize { w: i, h: i * 2 }).unwrap();
        }
        tx.send(Task::Say("done".repeat(100))).unwrap();
        tx.send(Task::Stop).unwrap();
        0u8
    })
    .start()
    .unwrap();
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(T) {
            Ok(t) => got.push(t),
            Err(TypedRecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    child.join_timeout(T).unwrap();
    assert_eq!(got.len(), 102);
    assert_eq!(got[7], Task::Resize { w: 7, h: 14 });
    assert_eq!(got[100], Task::Say("done".repeat(100)));
    assert_eq!(got[101], Task::Stop);
}

/// Regression (issue 10): a message of one type received as another decoded
/// silently (`Pipe::recv::<u64>()` of a `String` returned `Ok(8)`).
#[test]
fn wrong_type_from_another_process_is_type_mismatch() {
    let (tx, rx) = FrameQueue::builder().capacity(8).max_frame(256).create_typed_split::<String>().unwrap();
    let wrong = FrameQueue::builder().open_receiver_handle(&rx.handle()).unwrap().typed::<u64>();
    let (a, b) = Pipe::new().unwrap();
    let mut child = Process::closure(move || {
        tx.send("eight ch".to_string()).unwrap();
        a.send_value(&"eight ch".to_string()).unwrap();
        a.send_value(&7u64).unwrap();
        0u8
    })
    .start()
    .unwrap();
    assert!(matches!(wrong.recv_timeout(T), Err(TypedRecvError::TypeMismatch { .. })));
    assert!(matches!(b.recv_value_timeout::<u64>(T), Err(RecvError::TypeMismatch { .. })));
    assert_eq!(b.recv_value_timeout::<u64>(T).unwrap(), 7);
    child.join_timeout(T).unwrap();
    drop(rx);
}
