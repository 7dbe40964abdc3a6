//! Issue 13 item 2: an anonymous object is opened by fd only if the memfd is
//! sealed against shrinking (and growing, seals sealed) and is the size its
//! header claims; otherwise a peer could shrink it under our mapping (SIGBUS).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use shmproc::{Array, Handle, OpenError, ShmObject};

/// A memfd holding a byte-for-byte copy of `src`, sealed with `seals` (0: none).
fn copy_into_memfd(src: &Array<u64>, seals: i32) -> OwnedFd {
    let seg = src.segment();
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // header, which lies `payload_ptr - (payload offset)` before the payload; we
    // read it whole through the fd instead to stay in bounds.
    let mut bytes = vec![0u8; seg.len()];
    // SAFETY: pread into a buffer of exactly bytes.len() bytes from an open fd.
    let n = unsafe { libc::pread(seg.fd().as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n as usize, bytes.len());
    // SAFETY: pwrite from a buffer of bytes.len() bytes to our memfd.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n as usize, bytes.len());
    if seals != 0 {
        // SAFETY: fcntl(F_ADD_SEALS) on our memfd.
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    }
    fd
}

#[test]
fn unsealed_memfd_handle_is_refused() {
    let a = Array::<u64>::anonymous(&[1, 2, 3, 4]).unwrap();
    let fd = copy_into_memfd(&a, 0);
    let h = Handle::Fd(fd.as_raw_fd());
    match Array::<u64>::open_handle(&h) {
        Err(OpenError::NotSealed { reason }) => assert!(reason.contains("F_SEAL_SHRINK"), "{reason}"),
        other => panic!("expected NotSealed, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn memfd_sealed_only_against_growing_is_refused() {
    let a = Array::<u64>::anonymous(&[1, 2, 3, 4]).unwrap();
    let fd = copy_into_memfd(&a, libc::F_SEAL_GROW | libc::F_SEAL_SEAL);
    let r = Array::<u64>::open_handle(&Handle::Fd(fd.as_raw_fd()));
    assert!(matches!(r, Err(OpenError::NotSealed { .. })), "{:?}", r.map(|_| ()));
}

#[test]
fn fully_sealed_copy_opens() {
    let a = Array::<u64>::anonymous(&[1, 2, 3, 4]).unwrap();
    let fd = copy_into_memfd(&a, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL);
    let b = Array::<u64>::open_handle(&Handle::Fd(fd.as_raw_fd())).unwrap();
    assert_eq!(b.to_vec().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn regular_file_fd_is_refused() {
    let a = Array::<u64>::anonymous(&[1, 2, 3, 4]).unwrap();
    let path = std::env::temp_dir().join(format!("shmproc-test-sealed-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = a;
    // Not a memfd at all: not a shmproc object (an unsealed memfd is `NotSealed`, above).
    match Array::<u64>::open_handle(&Handle::Fd(f.as_raw_fd())) {
        Err(OpenError::InvalidArgument { reason }) => assert!(reason.contains("not a shmproc object"), "{reason}"),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
    }
}
