//! Runs in a private network namespace: two ends of an authenticated TCP
//! connection on 127.0.0.1, then the loopback interface goes down, as a host
//! crash or a cut network looks to a peer (no FIN, no RST, nothing answers).
//! Receives blocked without a timeout on both ends must end with
//! `Disconnected` once the dead-peer timeout (3 s here) has passed.
//!
//! Exit codes: 0 all checks passed, 1 a check failed (reason on stderr),
//! 77 the OS refused the namespace or the interface change (reason on stdout).

use std::time::{Duration, Instant};

use shmproc::connection::{Client, Listener, RecvError};

const SKIP: i32 = ipc_tests::PROBE_SKIP;
const DEAD: Duration = Duration::from_secs(3);

/// Sets or clears `IFF_UP` on the loopback interface (`SIOCSIFFLAGS`; rustix
/// has no wrapper for interface ioctls, hence libc).
fn loopback(up: bool) -> Result<(), String> {
    // SAFETY: a plain socket for the ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    let r = (|| {
        // SAFETY: `req` is a valid ifreq naming "lo"; the kernel fills in its flags.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } != 0 {
            return Err(format!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let up_flag = libc::IFF_UP as libc::c_short;
        req.ifr_ifru.ifru_flags = if up { flags | up_flag } else { flags & !up_flag };
        // SAFETY: as above; the kernel reads the flags.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } != 0 {
            return Err(format!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    })();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    r
}

fn private_network() -> Result<(), String> {
    // SAFETY: a plain syscall; this process is single-threaded here (nothing
    // spawned yet), as unshare(CLONE_NEWNET) wants.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error()));
    }
    loopback(true)
}

fn checks() -> Result<(), String> {
    let key = b"dead-peer-probe";
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap(), key).map_err(|e| format!("bind: {e}"))?;
    let addr = l.address().clone();
    let accepting = std::thread::spawn(move || l.accept());
    let client = Client::connect(&addr, key).map_err(|e| format!("connect: {e}"))?;
    let server = accepting.join().unwrap().map_err(|e| format!("accept: {e}"))?;
    for c in [&server, &client] {
        c.set_dead_peer_timeout(DEAD).map_err(|e| format!("set_dead_peer_timeout: {e}"))?;
    }
    // Both ends work before the cut.
    client.send_bytes(b"ping").map_err(|e| format!("send: {e}"))?;
    match server.recv_bytes_timeout(Duration::from_secs(5)) {
        Ok(b) if b == b"ping" => {}
        other => return Err(format!("first message: {other:?}")),
    }
    let cut = Instant::now();
    loopback(false)?;
    // Without the dead-peer timeout these receives never end (the watchdog
    // in main would fire).
    let c = std::thread::spawn(move || (client.recv_bytes(), cut.elapsed()));
    let (r, took) = (server.recv_bytes(), cut.elapsed());
    println!("server end: {r:?} after {took:?}");
    if !matches!(r, Err(RecvError::Disconnected)) {
        return Err(format!("server end: expected Disconnected, got {r:?}"));
    }
    let (r, took) = c.join().unwrap();
    println!("client end: {r:?} after {took:?}");
    if !matches!(r, Err(RecvError::Disconnected)) {
        return Err(format!("client end: expected Disconnected, got {r:?}"));
    }
    Ok(())
}

fn main() {
    if let Err(why) = private_network() {
        println!("{why}");
        std::process::exit(SKIP);
    }
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(40));
        eprintln!("dead_peer_probe: a receive outlived its peer by 40 s");
        std::process::exit(2);
    });
    if let Err(e) = checks() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!("both ends saw the peer vanish");
}
