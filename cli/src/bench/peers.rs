//! The peers a user would pick instead of shmproc, measured in the same run
//! (cargo feature `peers`, on by default):
//!
//! | transport         | scenarios                                  | how |
//! |-------------------|--------------------------------------------|-----|
//! | `ipc-channel`     | `pingpong-8B`, `stream-8B`, `stream-64KiB` | servo's `ipc-channel`: `IpcSender<u64>` pairs; `bytes_channel` for 64 KiB |
//! | `iceoryx2`        | `pingpong-8B`, `stream-8B`, `stream-64KiB` | iceoryx2 publish-subscribe, both sides busy-polling `receive`; 64 KiB as a `[u8]` slice copied in (`write_from_slice`) and out |
//! | `iceoryx2-event`  | `pingpong-8B`                              | iceoryx2 publish-subscribe plus an event service each way: the receiver sleeps in `Listener::timed_wait`; paired with `raw-futex` |
//!
//! Channels are made before the fork and inherited (ipc-channel's are file
//! descriptors). iceoryx2 nodes and ports are made after the fork, each
//! process its own; a ping-pong first exchanges a handshake message until it
//! comes back (a publisher delivers only to subscribers connected when it
//! sends), and a stream's producer is told to stop through a shared flag and
//! drained until it says it has.
//!
//! iceoryx2 keeps files of its own (shared memory under `/dev/shm`, service
//! and node records under a root directory) and leaves some behind (the
//! machine-wide `iox2_*.global_mgmt`). The bench gives it a configuration of
//! its own, a prefix and a root directory named after the bench process
//! ([`ice_config`], set before any fork so that parent and children agree),
//! and [`cleanup`] removes what is left under them when the run ends; any
//! other iceoryx2 application's files are left alone.

use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::backpressure_strategy::BackpressureStrategy;
use iceoryx2::prelude::*;
use ipc_channel::ipc as ipcc;
use shmproc::RawArray;

use super::os;
use super::{Case, Config, Metric, Session, Work};

/// The peer cases.
pub fn cases() -> Vec<Case> {
    // Before any case forks: the children inherit it.
    let _ = ice_config();
    use Metric::{BytesPerS, MsgsPerS, RttNs};
    vec![
        Case::new("pingpong-8B", "ipc-channel", RttNs, ipc_pingpong),
        Case::new("pingpong-8B", "iceoryx2", RttNs, |c| ice_pingpong(c, false)),
        Case::new("pingpong-8B", "iceoryx2-event", RttNs, |c| ice_pingpong(c, true)).against("raw-futex"),
        Case::new("stream-8B", "ipc-channel", MsgsPerS, ipc_stream8),
        Case::new("stream-8B", "iceoryx2", MsgsPerS, ice_stream8),
        Case::new("stream-64KiB", "ipc-channel", BytesPerS, ipc_stream_bulk),
        Case::new("stream-64KiB", "iceoryx2", BytesPerS, ice_stream_bulk),
    ]
}

const CHUNK: usize = 64 << 10;
const STOP: u64 = u64::MAX;
const TIMEOUT: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// `[stop, acknowledged]`, shared with a child.
fn flags() -> Result<RawArray<u32>, String> {
    RawArray::<u32>::builder().create_zeroed(2).map_err(err)
}

/// Whether the parent raised the stop flag.
fn stopping(f: &[AtomicU32]) -> bool {
    f[0].load(Ordering::Relaxed) != 0
}

// ---------------------------------------------------------------- ipc-channel

fn ipc_pingpong(cfg: &Config) -> Result<Session, String> {
    let (ping_tx, ping_rx) = ipcc::channel::<u64>().map_err(err)?;
    let (pong_tx, pong_rx) = ipcc::channel::<u64>().map_err(err)?;
    let child = os::fork_child(cfg.child_cpu, move || loop {
        match ping_rx.recv() {
            Ok(STOP) => return 0,
            Ok(v) => {
                if pong_tx.send(v).is_err() {
                    return 2;
                }
            }
            Err(_) => return 1,
        }
    })
    .map_err(err)?;
    let stopper = ping_tx.clone();
    let mut i = 0u64;
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        i += 1;
        ping_tx.send(i).map_err(err)?;
        match pong_rx.try_recv_timeout(TIMEOUT) {
            Ok(v) if v == i => Ok(()),
            Ok(v) => Err(format!("ipc-channel: reply {v} to {i}")),
            Err(e) => Err(format!("ipc-channel: {e:?}")),
        }
    })))
    .child(child)
    .on_finish(move || {
        let _ = stopper.send(STOP);
    })
    .placement(cfg.pair_placement()))
}

/// The producer side of an ipc-channel stream: sends until the stop flag,
/// then acknowledges. (The child holds inherited copies of the receiving
/// socket too, so the parent's close alone would not end a blocked send: the
/// parent drains until the acknowledgement instead.)
fn ipc_producer(f: &[AtomicU32], mut send: impl FnMut() -> bool) -> i32 {
    let mut i = 0u64;
    loop {
        if i.is_multiple_of(64) && stopping(f) {
            f[1].store(1, Ordering::Release);
            return 0;
        }
        if !send() {
            return 1;
        }
        i += 1;
    }
}

fn ipc_stream8(cfg: &Config) -> Result<Session, String> {
    let (tx, rx) = ipcc::channel::<u64>().map_err(err)?;
    let f = flags()?;
    let theirs = f.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
        let mut i = 0u64;
        ipc_producer(theirs.atomics(), || {
            i += 1;
            tx.send(i).is_ok()
        })
    })
    .map_err(err)?;
    let rx = Rc::new(rx);
    let drain = rx.clone();
    let mut got = 0u64;
    let stopper = f.clone();
    Ok(Session::new(Work::Stream(Box::new(move || {
        for _ in 0..256 {
            rx.try_recv_timeout(TIMEOUT).map_err(err)?;
            got += 1;
        }
        Ok(got)
    })))
    .child(child)
    .on_finish(move || drain_until_ack(&stopper, || drain.try_recv().is_ok()))
    .placement(cfg.pair_placement()))
}

fn ipc_stream_bulk(cfg: &Config) -> Result<Session, String> {
    let (tx, rx) = ipcc::bytes_channel().map_err(err)?;
    let f = flags()?;
    let theirs = f.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
        let src = vec![0x5au8; CHUNK];
        ipc_producer(theirs.atomics(), || tx.send(&src).is_ok())
    })
    .map_err(err)?;
    let rx = Rc::new(rx);
    let drain = rx.clone();
    let mut bytes = 0u64;
    let stopper = f.clone();
    Ok(Session::new(Work::Stream(Box::new(move || {
        // No timeout here: the runner's watchdog ends a stuck block.
        let v = rx.recv().map_err(err)?;
        if v.len() != CHUNK {
            return Err(format!("ipc-channel: {} bytes", v.len()));
        }
        bytes += v.len() as u64;
        Ok(bytes)
    })))
    .child(child)
    .on_finish(move || drain_until_ack(&stopper, || drain.try_recv().is_ok()))
    .placement(cfg.pair_placement()))
}

// ---------------------------------------------------------------- iceoryx2

/// A service name unique to this process and call.
fn service_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-bench-{}-{}-{what}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The bench's iceoryx2 files: its prefix and root directory.
struct IceFiles {
    prefix: String,
    root: String,
    config: iceoryx2::config::Config,
}

static ICE: std::sync::OnceLock<Option<IceFiles>> = std::sync::OnceLock::new();

/// iceoryx2's configuration for this run: its defaults, with the file
/// prefix `iox2_shmproc_bench_<pid>_` and the root directory
/// `<tmp>/shmproc-bench-iox2-<pid>/` (pid: the bench process, which sets it
/// before forking). `None` if iceoryx2 refuses those names (the defaults
/// are used then, and nothing is cleaned up).
fn ice_config() -> Option<&'static iceoryx2::config::Config> {
    ICE.get_or_init(|| {
        let pid = std::process::id();
        let prefix = format!("iox2_shmproc_bench_{pid}_");
        let root = format!("{}/shmproc-bench-iox2-{pid}/", std::env::temp_dir().display());
        let mut config = iceoryx2::config::Config::default();
        config.global.prefix = FileName::new(prefix.as_bytes()).ok()?;
        config.global.set_root_path(&Path::new(root.as_bytes()).ok()?);
        Some(IceFiles { prefix, root, config })
    })
    .as_ref()
    .map(|f| &f.config)
}

/// Removes the files iceoryx2 made under this run's prefix (in `/dev/shm`)
/// and its root directory. Call once every case has finished.
pub fn cleanup() {
    let Some(Some(f)) = ICE.get() else { return };
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&f.prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&f.root);
}

fn node() -> Result<Node<ipc::Service>, String> {
    set_log_level(LogLevel::Error);
    let b = NodeBuilder::new().signal_handling_mode(SignalHandlingMode::Disabled);
    let b = match ice_config() {
        Some(c) => b.config(c),
        None => b,
    };
    b.create::<ipc::Service>().map_err(err)
}

type PubSub<T> = iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, T, ()>;
type EventService = iceoryx2::service::port_factory::event::PortFactory<ipc::Service>;

fn u64_service(node: &Node<ipc::Service>, name: &str, buffer: usize) -> Result<PubSub<u64>, String> {
    node.service_builder(&name.try_into().map_err(err)?)
        .publish_subscribe::<u64>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(buffer)
        .history_size(0)
        .open_or_create()
        .map_err(err)
}

fn event_service(node: &Node<ipc::Service>, name: &str) -> Result<EventService, String> {
    node.service_builder(&name.try_into().map_err(err)?).event().open_or_create().map_err(err)
}

/// Busy-poll (`event == false`) or event-driven ping-pong of a u64.
fn ice_pingpong(cfg: &Config, event: bool) -> Result<Session, String> {
    let (ping_name, pong_name) = (service_name("ping"), service_name("pong"));
    let (pn, qn) = (ping_name.clone(), pong_name.clone());
    let child = os::fork_child(cfg.child_cpu, move || {
        let run = || -> Result<(), String> {
            let node = node()?;
            let sub = u64_service(&node, &pn, 4)?.subscriber_builder().create().map_err(err)?;
            let publ = u64_service(&node, &qn, 4)?.publisher_builder().create().map_err(err)?;
            let (listener, notifier) = if event {
                (
                    Some(event_service(&node, &pn)?.listener_builder().create().map_err(err)?),
                    Some(event_service(&node, &qn)?.notifier_builder().create().map_err(err)?),
                )
            } else {
                (None, None)
            };
            let mut idle_since = Instant::now();
            loop {
                match sub.receive().map_err(err)? {
                    Some(s) => {
                        let v = *s;
                        if v == STOP {
                            return Ok(());
                        }
                        publ.send_copy(v).map_err(err)?;
                        if let Some(n) = &notifier {
                            n.notify().map_err(err)?;
                        }
                        idle_since = Instant::now();
                    }
                    None => {
                        if let Some(l) = &listener {
                            // An error here is EINTR (the runner stops and continues
                            // this process between blocks): poll again.
                            let _ = l.timed_wait(|_| {}, Duration::from_millis(10));
                        }
                        if idle_since.elapsed() > Duration::from_secs(30) {
                            return Err("no ping".into());
                        }
                    }
                }
            }
        };
        match run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("iceoryx2 child: {e}");
                1
            }
        }
    })
    .map_err(err)?;
    let node = node()?;
    let publ = u64_service(&node, &ping_name, 4)?.publisher_builder().create().map_err(err)?;
    let sub = u64_service(&node, &pong_name, 4)?.subscriber_builder().create().map_err(err)?;
    let (listener, notifier) = if event {
        (
            Some(event_service(&node, &pong_name)?.listener_builder().create().map_err(err)?),
            Some(event_service(&node, &ping_name)?.notifier_builder().create().map_err(err)?),
        )
    } else {
        (None, None)
    };
    // Handshake: ping 0 until 0 comes back (the child's ports connect meanwhile).
    let end = Instant::now() + TIMEOUT;
    'hello: loop {
        if Instant::now() > end {
            return Err("iceoryx2: no answer to the handshake".into());
        }
        publ.send_copy(0).map_err(err)?;
        if let Some(n) = &notifier {
            let _ = n.notify();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(5) {
            if sub.receive().map_err(err)?.is_some() {
                break 'hello;
            }
        }
    }
    // Stale handshake replies are skipped below (they are all 0).
    let mut i = 0u64;
    let session = Session::new(Work::RoundTrip(Box::new(move |_| {
        let _keep = &node;
        i += 1;
        publ.send_copy(i).map_err(err)?;
        if let Some(n) = &notifier {
            n.notify().map_err(err)?;
        }
        let t = Instant::now();
        loop {
            match sub.receive().map_err(err)? {
                Some(s) if *s == i => return Ok(()),
                Some(s) if *s == 0 => {}
                Some(s) => return Err(format!("iceoryx2: reply {} to {i}", *s)),
                None => {
                    if let Some(l) = &listener {
                        let _ = l.timed_wait(|_| {}, Duration::from_millis(10));
                    }
                    if t.elapsed() > TIMEOUT {
                        return Err("iceoryx2: no reply".into());
                    }
                }
            }
        }
    })));
    // The stop message goes through a port of its own (the work owns the publisher).
    let stop_node = node_for_stop()?;
    let stopper = u64_service(&stop_node, &ping_name, 4)?.publisher_builder().create().map_err(err)?;
    let stop_notifier = if event {
        Some(event_service(&stop_node, &ping_name)?.notifier_builder().create().map_err(err)?)
    } else {
        None
    };
    Ok(session
        .child(child)
        .on_finish(move || {
            let _ = stopper.send_copy(STOP);
            if let Some(n) = &stop_notifier {
                let _ = n.notify();
            }
            drop(stopper);
            drop(stop_notifier);
            drop(stop_node);
        })
        .placement(cfg.pair_placement()))
}

fn node_for_stop() -> Result<Node<ipc::Service>, String> {
    node()
}

/// The producer side of an iceoryx2 stream: runs `send` until the stop flag,
/// then acknowledges.
fn ice_producer(f: &[AtomicU32], mut send: impl FnMut(u64) -> Result<(), String>) -> i32 {
    let mut i = 0u64;
    loop {
        if i.is_multiple_of(64) && stopping(f) {
            f[1].store(1, Ordering::Release);
            return 0;
        }
        if let Err(e) = send(i) {
            eprintln!("iceoryx2 producer: {e}");
            return 1;
        }
        i += 1;
    }
}

fn ice_stream8(cfg: &Config) -> Result<Session, String> {
    let name = service_name("stream");
    let f = flags()?;
    let (theirs, n2) = (f.clone(), name.clone());
    let child = os::fork_child(cfg.child_cpu, move || {
        let setup = || -> Result<_, String> {
            let node = node()?;
            let publ = u64_service(&node, &n2, 256)?
                .publisher_builder()
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .map_err(err)?;
            Ok((node, publ))
        };
        match setup() {
            Ok((_node, publ)) => ice_producer(theirs.atomics(), |i| publ.send_copy(i).map(|_| ()).map_err(err)),
            Err(e) => {
                eprintln!("iceoryx2 producer: {e}");
                1
            }
        }
    })
    .map_err(err)?;
    let node = node()?;
    let sub = Rc::new(u64_service(&node, &name, 256)?.subscriber_builder().create().map_err(err)?);
    let drain = sub.clone();
    let stop_flags = f.clone();
    let mut got = 0u64;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let _keep = &node;
        let t = Instant::now();
        let mut n = 0;
        while n < 256 {
            match sub.receive().map_err(err)? {
                Some(_) => n += 1,
                None if t.elapsed() > TIMEOUT => return Err("iceoryx2: the producer stalled".into()),
                None => std::hint::spin_loop(),
            }
        }
        got += n;
        Ok(got)
    })))
    .child(child)
    .on_finish(move || drain_until_ack(&stop_flags, || drain.receive().is_ok_and(|s| s.is_some())))
    .placement(cfg.pair_placement()))
}

/// Raises the stop flag and drains until the producer acknowledges (10 s at most).
fn drain_until_ack(f: &RawArray<u32>, mut drain: impl FnMut() -> bool) {
    let f = f.atomics();
    f[0].store(1, Ordering::Relaxed);
    let end = Instant::now() + TIMEOUT;
    while f[1].load(Ordering::Acquire) == 0 && Instant::now() < end {
        drain();
    }
    // Whatever it sent last.
    while drain() {}
}

fn ice_stream_bulk(cfg: &Config) -> Result<Session, String> {
    let name = service_name("bulk");
    let f = flags()?;
    let (theirs, n2) = (f.clone(), name.clone());
    let service = |node: &Node<ipc::Service>, name: &str| {
        node.service_builder(&name.try_into().map_err(err)?)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(8)
            .history_size(0)
            .open_or_create()
            .map_err(err)
    };
    let child = os::fork_child(cfg.child_cpu, move || {
        let setup = || -> Result<_, String> {
            let node = node()?;
            let publ = service(&node, &n2)?
                .publisher_builder()
                .initial_max_slice_len(CHUNK)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .map_err(err)?;
            Ok((node, publ))
        };
        let src = vec![0xa5u8; CHUNK];
        match setup() {
            Ok((_node, publ)) => ice_producer(theirs.atomics(), |_| {
                let s = publ.loan_slice_uninit(CHUNK).map_err(err)?;
                s.write_from_slice(&src).send().map(|_| ()).map_err(err)
            }),
            Err(e) => {
                eprintln!("iceoryx2 producer: {e}");
                1
            }
        }
    })
    .map_err(err)?;
    let node = node()?;
    let sub = Rc::new(service(&node, &name)?.subscriber_builder().create().map_err(err)?);
    let drain = sub.clone();
    let stop_flags = f.clone();
    let mut dst = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let _keep = &node;
        let t = Instant::now();
        loop {
            match sub.receive().map_err(err)? {
                Some(s) => {
                    let p = s.payload();
                    if p.len() != CHUNK {
                        return Err(format!("iceoryx2: {} bytes", p.len()));
                    }
                    dst.copy_from_slice(p);
                    std::hint::black_box(&mut dst);
                    bytes += CHUNK as u64;
                    return Ok(bytes);
                }
                None if t.elapsed() > TIMEOUT => return Err("iceoryx2: the producer stalled".into()),
                None => std::hint::spin_loop(),
            }
        }
    })))
    .child(child)
    .on_finish(move || drain_until_ack(&stop_flags, || drain.receive().is_ok_and(|s| s.is_some())))
    .placement(cfg.pair_placement()))
}
