//! Python's `multiprocessing`, measured in the same run where `python3` is on
//! the PATH (the cases fail with "skipped: python3 not found" otherwise):
//!
//! | scenario       | transport     | what                                                    |
//! |----------------|---------------|---------------------------------------------------------|
//! | `pingpong-8B`  | `python-pipe` | `Pipe()` between two processes, a small int sent and echoed |
//! | `stream-8B`    | `python-queue`| `Queue(1024)`: a child `put`s ints, the parent `get`s    |
//! | `stream-64KiB` | `python-pipe` | `Pipe()`, `send_bytes` / `recv_bytes` of 64 KiB          |
//! | `lock-incr`    | `python-mp`   | two children increment a `Value("Q")` under its lock     |
//!
//! One `python3` process per session stays up for the whole case and is
//! driven over its stdin: the runner writes `B <seconds>`, the script runs one
//! block of that length and prints its figure. Between blocks every Python
//! process is blocked (reading stdin, in `recv`, in a full `put`, or waiting
//! on an `Event`), so none competes with the other session's block.
//!
//! The bench pins itself to one CPU; a child process inherits that pin, so
//! each script first lets itself (and so its children) run on every CPU the
//! run may use ([`Config::cpus`]), and the placement column says so.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::{Case, Config, Metric, Session, Work};

/// The Python cases.
pub fn cases() -> Vec<Case> {
    use Metric::{BytesPerS, IncrPerS, MsgsPerS, RttNs};
    vec![
        Case::new("pingpong-8B", "python-pipe", RttNs, |c| start(c, PINGPONG)),
        Case::new("stream-8B", "python-queue", MsgsPerS, |c| start(c, QUEUE_STREAM)),
        Case::new("stream-64KiB", "python-pipe", BytesPerS, |c| start(c, PIPE_STREAM)),
        Case::new("lock-incr", "python-mp", IncrPerS, |c| start(c, LOCK_INCR)),
    ]
}

/// Shared by every script: affinity, then the block loop around `block(secs)`
/// after `setup()`.
const PRELUDE: &str = r#"
import multiprocessing as mp, os, sys, time
os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(",")])
ctx = mp.get_context("fork")
"#;

const DRIVER: &str = r#"
if __name__ == "__main__":
    setup()
    print("ready", flush=True)
    for line in sys.stdin:
        print(block(float(line.split()[1])), flush=True)
"#;

const PINGPONG: &str = r#"
def echo(c):
    while True:
        c.send(c.recv())
def setup():
    global a, child
    a, b = ctx.Pipe()
    child = ctx.Process(target=echo, args=(b,), daemon=True)
    child.start()
def block(secs):
    n, t0 = 0, time.perf_counter()
    end = t0 + secs
    while True:
        for _ in range(32):
            a.send(n)
            if a.recv() != n:
                sys.exit("wrong echo")
            n += 1
        t = time.perf_counter()
        if t >= end:
            return (t - t0) / n * 1e9
"#;

const QUEUE_STREAM: &str = r#"
def produce(q):
    i = 0
    while True:
        q.put(i)
        i += 1
def setup():
    global q, child
    q = ctx.Queue(1024)
    child = ctx.Process(target=produce, args=(q,), daemon=True)
    child.start()
def block(secs):
    n, t0 = 0, time.perf_counter()
    end = t0 + secs
    while True:
        for _ in range(256):
            q.get()
        n += 256
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)
"#;

const PIPE_STREAM: &str = r#"
def produce(c):
    data = bytes(65536)
    while True:
        c.send_bytes(data)
def setup():
    global a, child
    a, b = ctx.Pipe(duplex=False)
    child = ctx.Process(target=produce, args=(b,), daemon=True)
    child.start()
def block(secs):
    n, t0 = 0, time.perf_counter()
    end = t0 + secs
    while True:
        n += len(a.recv_bytes())
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)
"#;

const LOCK_INCR: &str = r#"
def work(v, go):
    while True:
        go.wait()
        while go.is_set():
            for _ in range(100):
                with v.get_lock():
                    v.value += 1
def setup():
    global v, go, kids
    v, go = ctx.Value("Q", 0), ctx.Event()
    kids = [ctx.Process(target=work, args=(v, go), daemon=True) for _ in range(2)]
    for k in kids:
        k.start()
def block(secs):
    go.set()
    time.sleep(secs / 10)
    n0, t0 = v.value, time.perf_counter()
    time.sleep(secs)
    n1, t1 = v.value, time.perf_counter()
    go.clear()
    return (n1 - n0) / (t1 - t0)
"#;

/// A running script: its stdin (closed on drop: the script ends) and stdout.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Script {
    fn line(&mut self) -> Result<String, String> {
        let mut s = String::new();
        match self.stdout.read_line(&mut s) {
            Ok(0) => Err("python3 ended early".into()),
            Ok(_) => Ok(s.trim().to_string()),
            Err(e) => Err(format!("python3: {e}")),
        }
    }

    fn block(&mut self, len: Duration) -> Result<f64, String> {
        let stdin = self.stdin.as_mut().ok_or("python3: stdin closed")?;
        writeln!(stdin, "B {}", len.as_secs_f64()).map_err(|e| format!("python3: {e}"))?;
        stdin.flush().map_err(|e| format!("python3: {e}"))?;
        let l = self.line()?;
        l.parse().map_err(|_| format!("python3 printed {l:?}, not a figure"))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // A script whose stdin closed exits within milliseconds (its daemon
        // children are terminated by multiprocessing); kill it otherwise.
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `body` (its `setup()` and `block(secs)`) as a session (also used by
/// the pool and manager cases).
pub(super) fn start(cfg: &Config, body: &str) -> Result<Session, String> {
    let cpus: Vec<String> = cfg.cpus.iter().map(|c| c.to_string()).collect();
    let script = format!("{PRELUDE}{body}{DRIVER}");
    let mut child = match Command::new("python3")
        .args(["-c", &script, &cpus.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("skipped: python3 not found".into()),
        Err(e) => return Err(format!("python3: {e}")),
    };
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().ok_or("python3: no stdout")?);
    let mut s = Script { child, stdin, stdout };
    let ready = s.line()?;
    if ready != "ready" {
        return Err(format!("python3 printed {ready:?} at start"));
    }
    Ok(Session::new(Work::Block(Box::new(move |len| s.block(len))))
        .watch(pid)
        .placement(format!("python3 and its children unpinned on {}", cfg.all_cpus_text())))
}
