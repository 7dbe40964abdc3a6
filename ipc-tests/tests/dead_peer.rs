//! A TCP peer that vanishes without closing (its host crashed, the network
//! went away) must not leave a blocked receive waiting for ever: keepalive
//! probes and `TCP_USER_TIMEOUT` end it with `Disconnected`. Real sockets on
//! 127.0.0.1 in a private network namespace whose loopback is taken down.

use std::time::Duration;

use ipc_tests::run_probe;

const PROBE: &str = env!("CARGO_BIN_EXE_dead_peer_probe");

#[test]
fn receives_end_when_the_tcp_peer_vanishes() {
    let Some((st, out, err)) = run_probe(PROBE, Duration::from_secs(60)) else { return };
    assert!(st.success(), "probe failed: {st:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("both ends saw the peer vanish"), "{out}");
}
