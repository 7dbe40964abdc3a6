//! Role for `tests/process_handles.rs`: a separate executable that receives
//! shmproc objects by handle through its environment and uses them.
//!
//! Usage: `process_handle_user <mode>`; exits 0 when the mode's expectation
//! holds, 2 otherwise (with the reason on stderr).
//!
//! * `use`: every object in [`USERS`] is opened with `inherited` and updated.
//! * `missing`, `wrong-kind`, `wrong-type`: the precise error is checked.
//!
//! Adding a primitive is one function and one row in [`USERS`], plus the
//! matching `share` in the test.

use std::time::Duration;

use shmproc::process::{inherited, InheritError};
use shmproc::{Array, Connection, Mutex, OpenError, Queue, Segment, Value};

const WAIT: Duration = Duration::from_secs(10);

fn use_queue() -> Result<(), String> {
    let q: Queue<u64> = inherited("jobs").map_err(|e| e.to_string())?;
    // The launcher queued 1, 2, 3: send back their sum times ten.
    let mut sum = 0;
    for _ in 0..3 {
        sum += q.recv_timeout(WAIT).map_err(|e| format!("recv: {e:?}"))?;
    }
    q.send(sum * 10).map_err(|e| format!("send: {e:?}"))?;
    Ok(())
}

fn use_pipe() -> Result<(), String> {
    let conn: Connection = inherited("pipe").map_err(|e| e.to_string())?;
    let n: u64 = conn.recv_timeout(WAIT).map_err(|e| format!("recv: {e:?}"))?;
    conn.send(&(n * 6)).map_err(|e| format!("send: {e:?}"))?;
    Ok(())
}

fn use_mutex() -> Result<(), String> {
    let m: Mutex<u64> = inherited("lock").map_err(|e| e.to_string())?;
    let mut g = m.lock_timeout(WAIT).map_err(|e| e.to_string())?;
    *g += 100;
    Ok(())
}

fn use_value() -> Result<(), String> {
    let v: Value<u64> = inherited("counter").map_err(|e| e.to_string())?;
    v.update(|n| *n += 1).map_err(|e| e.to_string())?;
    Ok(())
}

fn use_array() -> Result<(), String> {
    let a: Array<u32> = inherited("ARR").map_err(|e| e.to_string())?;
    a.update(|s| s.iter_mut().for_each(|x| *x *= 2)).map_err(|e| e.to_string())?;
    Ok(())
}

fn use_segment() -> Result<(), String> {
    let s: Segment = inherited("seg").map_err(|e| e.to_string())?;
    if s.payload_len() < 5 {
        return Err(format!("segment payload of {} bytes is too small", s.payload_len()));
    }
    // SAFETY: the payload is at least 5 bytes (checked); the launcher does not
    // touch it until this process has exited.
    unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), s.payload_ptr().as_ptr(), 5) };
    Ok(())
}

/// Opens one shared object and uses it.
type User = fn() -> Result<(), String>;

/// (share name, user) for every shared object.
const USERS: &[(&str, User)] = &[
    ("counter", use_value),
    ("ARR", use_array),
    ("seg", use_segment),
    ("jobs", use_queue),
    ("pipe", use_pipe),
    ("lock", use_mutex),
];

fn check(mode: &str) -> Result<(), String> {
    match mode {
        "use" => {
            for (name, f) in USERS {
                f().map_err(|e| format!("{name}: {e}"))?;
            }
            Ok(())
        }
        "missing" => match inherited::<Value<u64>>("nope") {
            Err(InheritError::Missing { var }) if var == "SHMPROC_HANDLE_NOPE" => Ok(()),
            other => Err(format!("expected Missing, got {other:?}")),
        },
        "wrong-kind" => match inherited::<Value<u64>>("ARR") {
            Err(InheritError::Open { source, .. }) if matches!(*source, OpenError::KindMismatch { .. }) => Ok(()),
            other => Err(format!("expected a kind mismatch, got {other:?}")),
        },
        "wrong-type" => match inherited::<Value<u32>>("counter") {
            Err(InheritError::Open { source, .. }) if matches!(*source, OpenError::TypeMismatch { .. }) => Ok(()),
            other => Err(format!("expected a type mismatch, got {other:?}")),
        },
        "no-leak" => {
            // The fd the launcher passed must not stay inheritable once it is
            // opened: programs this one runs were never given the object.
            let _v: Value<u64> = inherited("counter").map_err(|e| e.to_string())?;
            let var = std::env::var("SHMPROC_HANDLE_COUNTER").map_err(|e| e.to_string())?;
            let fd: i32 = var.strip_prefix("fd:").and_then(|n| n.parse().ok()).ok_or(format!("handle {var:?}"))?;
            // SAFETY: fcntl(F_GETFD) on an integer only reads the fd's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                return Err(format!("inherited fd {fd} is still inheritable after inherited()"));
            }
            Ok(())
        }
        other => Err(format!("unknown mode {other:?}")),
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if let Err(e) = check(&mode) {
        eprintln!("process_handle_user {mode}: {e}");
        std::process::exit(2);
    }
}
