//! Helper binary for the pipe tests. Roles:
//! * `echo-name <name> <count>`: opens end B of a named pipe and echoes `count` messages.
//! * `echo-handle <handle> <count>`: the same through an inherited handle (`fd:N`).
//! * `try-open <name>`: tries to open end B; exit 0 if opened, 3 if refused.
//! * `scribble <name> <offset> <u64>`: writes a u64 at a byte offset of `/dev/shm/<name>`,
//!   like a hostile process that can write the segment.

use std::os::unix::fs::FileExt;
use std::process::exit;
use std::time::Duration;

use shmproc::{Handle, Pipe};

fn echo(c: shmproc::Connection, count: usize) {
    let mut buf = vec![0u8; 1 << 16];
    for i in 0..count {
        let n = match c.recv_bytes_into_timeout(&mut buf, Duration::from_secs(30)) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("echo: recv {i}: {e}");
                exit(4)
            }
        };
        if let Err(e) = c.send_bytes(&buf[..n]) {
            eprintln!("echo: send {i}: {e}");
            exit(5)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| panic!("missing argument {i}"));
    match arg(1).as_str() {
        "echo-name" => {
            let c = Pipe::builder().name(arg(2)).open().expect("open by name");
            echo(c, arg(3).parse().expect("count"));
        }
        "echo-handle" => {
            let h: Handle = arg(2).parse().expect("handle");
            let c = Pipe::builder().open_handle(&h).expect("open by handle");
            echo(c, arg(3).parse().expect("count"));
        }
        "try-open" => match Pipe::builder().name(arg(2)).open() {
            Ok(_) => exit(0),
            Err(shmproc::OpenError::PermissionDenied { .. }) => exit(3),
            Err(e) => {
                eprintln!("try-open: {e}");
                exit(4)
            }
        },
        "scribble" => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/shm/{}", arg(2)))
                .expect("open shm file");
            let off: u64 = arg(3).parse().expect("offset");
            let v: u64 = arg(4).parse().expect("value");
            f.write_all_at(&v.to_le_bytes(), off).expect("write");
        }
        other => panic!("unknown role {other}"),
    }
}
