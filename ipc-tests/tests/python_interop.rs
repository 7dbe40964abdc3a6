//! A non-Rust program attaches to a shmproc segment using only the layout in
//! SAFETY.md: Python's `multiprocessing.shared_memory` opens an `Array<f64>`
//! created here by name, checks the header, reads the elements at byte 192
//! and writes one back.

use std::process::Command;
use std::time::Duration;

use ipc_tests::{run_with_timeout, unique_name};
use shmproc::Array;

const SCRIPT: &str = r#"
import struct, sys
from multiprocessing import shared_memory, resource_tracker
name, n = sys.argv[1], int(sys.argv[2])
shm = shared_memory.SharedMemory(name=name, create=False)
# Python < 3.13 registers opened segments with its resource tracker, which would
# unlink the segment at exit; it is not ours to remove.
try:
    resource_tracker.unregister(shm._name, "shared_memory")
except Exception:
    pass
buf = shm.buf
magic, version, kind, ready = struct.unpack_from("<8sIII", buf, 0)
assert magic == b"SHMPROC\0", magic
assert version == 1 and kind == 4 and ready == 0x52454459, (version, kind, ready)
payload_offset, payload_size = struct.unpack_from("<QQ", buf, 32)
type_size, = struct.unpack_from("<I", buf, 56)
type_name = bytes(buf[64:128]).rstrip(b"\0").decode()
assert type_size == 8 and type_name == "f64", (type_size, type_name)
data = payload_offset + 64
assert data == 192 and payload_size == 64 + 8 * n
vals = struct.unpack_from("<%dd" % n, buf, data)
print(" ".join(repr(v) for v in vals))
struct.pack_into("<d", buf, data, -1.25)
del buf
shm.close()
"#;

#[test]
fn python_reads_array_at_documented_offset() {
    let Ok(out) = Command::new("python3").arg("--version").output() else {
        eprintln!("skipped: python3 is not installed, so the interop check cannot run");
        return;
    };
    if !out.status.success() {
        eprintln!("skipped: python3 --version failed");
        return;
    }
    let name = unique_name("py");
    let vals = [0.5, 1.5, 2.5, 1e300, -0.0];
    let arr = Array::<f64>::create(&name, &vals).unwrap();
    let (st, stdout, stderr) =
        run_with_timeout(Command::new("python3").args(["-c", SCRIPT, &name, "5"]), Duration::from_secs(60));
    assert!(st.success(), "python failed: {stderr}");
    let got: Vec<f64> = stdout.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(got, vals);
    assert_eq!(arr.get(0).unwrap(), -1.25, "Python's write must be visible");
    assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists(), "python must not unlink it");
}
