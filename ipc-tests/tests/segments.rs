//! Foundation tests with real processes: named and anonymous segments, typed
//! Value/Array across processes, and every open error.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ipc_tests::{fork_run, run_with_timeout, unique_name, wait_pid, Ended, UnlinkOnDrop};
use shmproc::{Array, Handle, ObjectKind, OpenError, RawArray, Segment, Value};

const CHILD: &str = env!("CARGO_BIN_EXE_seg_child");
const T: Duration = Duration::from_secs(30);

fn short_open<T: bytemuck::Pod>(name: &str) -> Result<Array<T>, OpenError> {
    Array::<T>::builder().name(name).open_timeout(Duration::from_millis(200)).open()
}

#[test]
fn child_binary_changes_named_array() {
    let name = unique_name("arr");
    let arr = Array::<f64>::create(&name, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let (st, _, err) = run_with_timeout(Command::new(CHILD).args(["array-add", &name, "10.5"]), T);
    assert!(st.success(), "child failed: {err}");
    assert_eq!(arr.to_vec().unwrap(), vec![11.5, 12.5, 13.5, 14.5]);
}

#[test]
fn forked_child_shares_anonymous_value() {
    let v = Value::<u64>::anonymous(7).unwrap();
    let child = {
        let v = v.clone();
        fork_run(move || {
            for _ in 0..1000 {
                if v.update(|x| *x += 1).is_err() {
                    return 1;
                }
            }
            0
        })
    };
    for _ in 0..1000 {
        v.update(|x| *x += 1).unwrap();
    }
    assert_eq!(wait_pid(child, T), Ended::Code(0));
    assert_eq!(v.get().unwrap(), 2007);
}

#[test]
fn anonymous_value_handed_to_exec_child_by_fd() {
    let v = Value::<u64>::anonymous(0).unwrap();
    v.segment().set_inheritable(true).unwrap();
    let h = v.handle();
    assert!(matches!(h, Handle::Fd(_)));
    let (st, _, err) = run_with_timeout(Command::new(CHILD).args(["value-incr", &h.to_string(), "500"]), T);
    v.segment().set_inheritable(false).unwrap();
    assert!(st.success(), "child failed: {err}");
    assert_eq!(v.get().unwrap(), 500);
}

#[test]
fn named_value_by_handle_string() {
    let name = unique_name("valh");
    let v = Value::<u64>::create(&name, 1).unwrap();
    let (st, _, err) = run_with_timeout(Command::new(CHILD).args(["value-incr", &v.handle().to_string(), "41"]), T);
    assert!(st.success(), "child failed: {err}");
    assert_eq!(v.get().unwrap(), 42);
}

#[test]
fn open_or_create_race_initialises_once() {
    // Several processes race to open_or_create the same value and each adds
    // 100. If anyone re-initialised it after another had added, the sum would
    // come up short.
    for round in 0..5 {
        let name = unique_name(&format!("race{round}"));
        let _cleanup = UnlinkOnDrop(name.clone());
        let mut kids: Vec<_> =
            (0..4).map(|_| Command::new(CHILD).args(["race", &name, "100"]).spawn().expect("spawn")).collect();
        for k in &mut kids {
            let st = ipc_tests::wait_child(k, T);
            assert!(st.success());
        }
        let v = Value::<u64>::open(&name).unwrap();
        assert_eq!(v.get().unwrap(), 400, "round {round}");
    }
}

#[test]
fn wrong_type_is_type_mismatch() {
    let name = unique_name("ty");
    let _a = Array::<f64>::create(&name, &[0.0; 4]).unwrap();
    match short_open::<u32>(&name) {
        Err(OpenError::TypeMismatch { expected, found }) => {
            assert_eq!(expected.name(), "u32");
            assert_eq!(found.name(), "f64");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn wrong_kind_is_kind_mismatch() {
    let name = unique_name("kind");
    let _v = Value::<f64>::create(&name, 1.0).unwrap();
    match short_open::<f64>(&name) {
        Err(OpenError::KindMismatch { expected: ObjectKind::Array, found: ObjectKind::Value }) => {}
        other => panic!("expected KindMismatch, got {other:?}"),
    }
    match RawArray::<f64>::builder().name(&name).open() {
        Err(OpenError::KindMismatch { expected: ObjectKind::RawArray, found: ObjectKind::Value }) => {}
        other => panic!("expected KindMismatch, got {other:?}"),
    }
}

#[test]
fn wrong_length_is_size_mismatch() {
    let name = unique_name("len");
    let _a = Array::<u64>::create(&name, &[0; 8]).unwrap();
    match Array::<u64>::builder().name(&name).len(9).open() {
        Err(OpenError::SizeMismatch { .. }) => {}
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(Array::<u64>::builder().name(&name).len(8).open().unwrap().len(), 8);
}

/// A named object is built under a temporary name and renamed into place
/// once ready: a process opening the name while another creates it finds
/// nothing or the whole object, never a half-built one (`NotReady`). Before,
/// an opener that came between the creator's `shm_open` and its "ready"
/// waited, and a creator killed there left a name nobody could open or create.
#[test]
fn a_name_appears_only_when_its_object_is_ready() {
    let name = unique_name("publish");
    const LEN: usize = 4 << 20;
    let creator = {
        let name = name.clone();
        fork_run(move || {
            for _ in 0..60 {
                // Reserving 4 MiB and filling it takes a while: a wide window.
                match Array::<u8>::create(&name, &vec![7u8; LEN]) {
                    Ok(a) => drop(a),
                    Err(_) => return 1,
                }
            }
            0
        })
    };
    let (mut found, mut absent) = (0u32, 0u32);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match Array::<u8>::builder().name(&name).open_timeout(Duration::ZERO).open() {
            Ok(a) => {
                assert_eq!(a.len(), LEN);
                let v = a.to_vec().unwrap();
                assert!(v[0] == 7 && v[LEN - 1] == 7, "an opened object was not fully initialised");
                found += 1;
            }
            Err(OpenError::NotFound { .. }) => absent += 1,
            Err(e) => panic!("opening while another process creates: {e:?}"),
        }
        let mut status = 0;
        // SAFETY: polling our own child without blocking; `status` is ours.
        if unsafe { libc::waitpid(creator, &mut status, libc::WNOHANG) } == creator {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the creating child failed: {status:#x}"
            );
            break;
        }
        assert!(Instant::now() < end, "the creating child did not finish");
    }
    assert!(absent > 0, "never saw the name absent ({found} found)");
}

#[test]
fn missing_name_is_not_found() {
    match short_open::<f64>(&unique_name("missing")) {
        Err(OpenError::NotFound { name }) => assert!(name.starts_with("/shmproc-test-missing")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // And from another process, as a message on stderr and exit code 3.
    let (st, _, err) = run_with_timeout(Command::new(CHILD).args(["open-array", &unique_name("missing2")]), T);
    assert_eq!(st.code(), Some(3));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn bad_names_are_name_invalid() {
    for bad in ["", "a/b", ".x", "white space", "semi;colon", &"n".repeat(300)] {
        match Array::<f64>::create(bad, &[0.0]) {
            Err(OpenError::NameInvalid { .. }) => {}
            other => panic!("{bad:?}: expected NameInvalid, got {other:?}"),
        }
        match short_open::<f64>(bad) {
            Err(OpenError::NameInvalid { .. }) => {}
            other => panic!("{bad:?}: expected NameInvalid, got {other:?}"),
        }
    }
}

#[test]
fn create_twice_is_already_exists() {
    let name = unique_name("dup");
    let _a = Array::<f64>::create(&name, &[0.0]).unwrap();
    assert!(matches!(Array::<f64>::create(&name, &[0.0]), Err(OpenError::AlreadyExists { .. })));
}

#[test]
fn foreign_owner_is_refused_unless_allowed() {
    let name = unique_name("uid");
    let a = Array::<f64>::create(&name, &[3.0]).unwrap();
    // The tests run as root (the CI machine): give the segment to another uid.
    if shmproc::__private::set_owner(a.segment(), 4242, 4242).is_err() {
        eprintln!("skipped: cannot fchown (not root)");
        return;
    }
    match short_open::<f64>(&name) {
        Err(OpenError::PermissionDenied { reason }) => assert!(reason.contains("4242"), "{reason}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let b = Array::<f64>::builder().name(&name).allow_foreign_owner(true).open().unwrap();
    assert_eq!(b.get(0).unwrap(), 3.0);
}

#[test]
fn group_writable_is_refused_unless_allowed() {
    let name = unique_name("mode");
    let a = Array::<f64>::create(&name, &[3.0]).unwrap();
    shmproc::__private::set_mode(a.segment(), 0o666).unwrap();
    match short_open::<f64>(&name) {
        Err(OpenError::PermissionDenied { reason }) => assert!(reason.contains("666"), "{reason}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(Array::<f64>::builder().name(&name).allow_shared_write(true).open().is_ok());
}

#[test]
fn default_mode_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique_name("perm");
    let _a = Array::<f64>::create(&name, &[0.0]).unwrap();
    let mode = std::fs::metadata(format!("/dev/shm/{name}")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn scribble(name: &str, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(format!("/dev/shm/{name}")).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn scribbled_headers_give_precise_errors() {
    // (offset, bytes, check)
    type Check = fn(&Result<Array<f64>, OpenError>) -> bool;
    let cases: Vec<(u64, Vec<u8>, Check)> = vec![
        (0, b"NOTSHMPR".to_vec(), |r| matches!(r, Err(OpenError::Corrupt { .. }))),
        (8, 99u32.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::VersionMismatch { found: 99, .. }))),
        (12, 4000u32.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::KindMismatch { .. }))),
        (24, u64::MAX.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::Corrupt { .. }))),
        (32, 3u64.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::Corrupt { .. }))),
        (40, (1u64 << 40).to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::Corrupt { .. }))),
        (40, 70u64.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::Corrupt { .. }))),
        (48, 1234u64.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::TypeMismatch { .. }))),
        (16, 0u32.to_le_bytes().to_vec(), |r| matches!(r, Err(OpenError::NotReady { .. }))),
    ];
    for (i, (off, bytes, check)) in cases.into_iter().enumerate() {
        let name = unique_name(&format!("scr{i}"));
        let _a = Array::<f64>::create(&name, &[1.0; 16]).unwrap();
        scribble(&name, off, &bytes);
        let r = short_open::<f64>(&name);
        assert!(check(&r), "case {i} (offset {off}): got {r:?}");
    }
}

#[test]
fn random_scribbles_never_crash_an_opener() {
    // Another process scribbles random bytes over the header; opening from a
    // fresh process must give an error or succeed, never crash.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..40 {
        let name = unique_name(&format!("rnd{i}"));
        let _a = Array::<f64>::create(&name, &[1.0; 32]).unwrap();
        let mut junk = [0u8; 24];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        scribble(&name, x % 112, &junk[..(x as usize >> 8) % 16 + 1]);
        let (st, out, err) = run_with_timeout(Command::new(CHILD).args(["open-array", &name]), T);
        assert!(matches!(st.code(), Some(0) | Some(3)), "opener crashed: {st:?} {out} {err}");
    }
}

#[test]
fn truncated_segments_are_corrupt() {
    let name = unique_name("trunc");
    let a = Array::<f64>::create(&name, &[1.0; 512]).unwrap();
    // Shorter than the header.
    shmproc::__private::set_len(a.segment(), 64).unwrap();
    match short_open::<f64>(&name) {
        Err(OpenError::Corrupt { reason }) => assert!(reason.contains("too small"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Long enough for a header, but shorter than the header claims.
    let name2 = unique_name("trunc2");
    let b = Array::<f64>::create(&name2, &[1.0; 1024]).unwrap();
    shmproc::__private::set_len(b.segment(), 4096).unwrap();
    match short_open::<f64>(&name2) {
        Err(OpenError::Corrupt { reason }) => assert!(reason.contains("header says"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn foreign_object_never_initialised_is_not_ready() {
    // A zero-filled object (or an empty one) that no shmproc creator ever published.
    for size in [0u64, 4096] {
        let name = unique_name("raw");
        let _c = UnlinkOnDrop(name.clone());
        let f = OpenOptions::new().create_new(true).write(true).open(format!("/dev/shm/{name}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
        f.set_len(size).unwrap();
        let t0 = Instant::now();
        match short_open::<f64>(&name) {
            Err(OpenError::NotReady { .. }) => assert!(t0.elapsed() >= Duration::from_millis(200)),
            other => panic!("size {size}: expected NotReady, got {other:?}"),
        }
    }
}

/// A file that is not a shmproc segment (other bytes where the magic goes)
/// is Corrupt at once, not NotReady after the whole open timeout.
#[test]
fn foreign_file_is_corrupt_at_once() {
    let name = unique_name("foreign");
    let _c = UnlinkOnDrop(name.clone());
    let mut f = OpenOptions::new().create_new(true).write(true).open(format!("/dev/shm/{name}")).unwrap();
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
    f.write_all(&[b'x'; 4096]).unwrap();
    let t0 = Instant::now();
    let r = Array::<f64>::builder().name(&name).open_timeout(Duration::from_secs(20)).open();
    match r {
        Err(OpenError::Corrupt { reason }) => assert!(reason.contains("bad magic"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "waited {:?} for a foreign file", t0.elapsed());
}

/// A creator's drop removes its name only if the name is still its segment:
/// unlinked by hand and created again by someone else, the name is theirs.
#[test]
fn creator_drop_leaves_a_name_created_again_by_another() {
    let name = unique_name("again");
    let first = Value::<u64>::create(&name, 1).unwrap();
    shmproc::unlink(&name).unwrap();
    let second = Value::<u64>::create(&name, 2).unwrap();
    drop(first);
    assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists(), "the first creator removed the second's name");
    assert_eq!(Value::<u64>::open(&name).unwrap().get().unwrap(), 2);
    drop(second);
    assert!(
        !std::path::Path::new(&format!("/dev/shm/{name}")).exists(),
        "the second creator's drop keeps its own name"
    );
}

#[test]
fn lifetime_unlink_persist() {
    let name = unique_name("life");
    let path = format!("/dev/shm/{name}");
    {
        let _a = Array::<u8>::create(&name, &[1, 2, 3]).unwrap();
        assert!(std::path::Path::new(&path).exists());
    }
    assert!(!std::path::Path::new(&path).exists(), "creator drop must unlink");

    let a = Array::<u8>::create(&name, &[1, 2, 3]).unwrap();
    a.segment().persist();
    let opened = Array::<u8>::open(&name).unwrap();
    drop(a);
    assert!(std::path::Path::new(&path).exists(), "persist must keep the name");
    shmproc::unlink(&name).unwrap();
    assert!(!std::path::Path::new(&path).exists());
    // The mapping outlives the name.
    assert_eq!(opened.to_vec().unwrap(), vec![1, 2, 3]);
    assert!(matches!(shmproc::unlink(&name), Err(OpenError::NotFound { .. })));
}

#[test]
fn forked_child_does_not_unlink_creators_name() {
    let name = unique_name("forkdrop");
    let a = Array::<u8>::create(&name, &[9]).unwrap();
    let child = {
        let a = a.clone();
        fork_run(move || {
            drop(a); // the child's copy of the creator handle drops here
            0
        })
    };
    assert_eq!(wait_pid(child, T), Ended::Code(0));
    assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
    assert_eq!(Array::<u8>::open(&name).unwrap().to_vec().unwrap(), vec![9]);
}

#[test]
fn raw_segment_between_processes() {
    let name = unique_name("bytes");
    let s = Segment::builder().name(&name).size(4096).create().unwrap();
    let child = fork_run(move || {
        let s2 = Segment::builder().name(&name).open().unwrap();
        // SAFETY: the parent only reads after the child has exited.
        unsafe { std::ptr::write_bytes(s2.payload_ptr().as_ptr(), 0xAB, s2.payload_len()) };
        0
    });
    assert_eq!(wait_pid(child, T), Ended::Code(0));
    // SAFETY: the child has exited; nobody writes concurrently.
    let bytes = unsafe { std::slice::from_raw_parts(s.payload_ptr().as_ptr(), s.payload_len()) };
    assert!(bytes.iter().all(|&b| b == 0xAB));
}

/// `/dev/shm` is writable by everyone: another user can plant a symbolic link
/// (to a segment or any file of ours) or a FIFO under a name we will open.
/// Opening by name follows no link and takes only a regular file; neither
/// hangs (a FIFO) nor opens the link's target.
#[test]
fn open_by_name_follows_no_symlink_and_takes_only_regular_files() {
    let target = unique_name("link-target");
    let v = Value::<u64>::create(&target, 42).unwrap();
    let link = unique_name("link");
    let _gone_link = UnlinkOnDrop(link.clone());
    std::os::unix::fs::symlink(format!("/dev/shm/{target}"), format!("/dev/shm/{link}")).unwrap();
    let r = Value::<u64>::builder().name(&link).open_timeout(Duration::from_millis(200)).open();
    let e = r.expect_err("opened a segment through a symbolic link");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // open_or_create neither: the name exists (as a link), so it is refused.
    let r = Value::<u64>::builder().name(&link).open_timeout(Duration::from_millis(200)).open_or_create(0);
    assert!(r.is_err(), "open_or_create went through a symbolic link");
    assert_eq!(v.get().unwrap(), 42);

    let fifo = unique_name("fifo");
    let _gone_fifo = UnlinkOnDrop(fifo.clone());
    let path = std::ffi::CString::new(format!("/dev/shm/{fifo}")).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let r = Value::<u64>::builder().name(&fifo).open_timeout(Duration::from_millis(200)).open();
    let e = r.expect_err("opened a FIFO as a segment");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(t.elapsed() < T);
}
