//! The `shmproc` command line: `bench --json`, usage errors, `ls`, `gc`.
//!
//! Runs the real binary. Segments are named `shmproc-test-cli-<pid>-...`, and
//! every `gc` here passes `--prefix` with that unique prefix, so parallel test
//! runs never touch each other's segments. A guard unlinks what a test made.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use shmproc::Value;

/// Runs the `shmproc` binary; kills it and fails if it takes over two minutes.
fn shmproc(args: &[&str]) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmproc"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shmproc");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = wait_within(&mut child, std::time::Duration::from_secs(120), args);
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Waits for `child` (`shmproc args`); kills it and fails if it takes longer than `limit`.
fn wait_within(child: &mut std::process::Child, limit: std::time::Duration, args: &[&str]) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if std::time::Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmproc {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-cli-{}-{}-", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks the named segments when dropped (ignoring ones already gone).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = shmproc::unlink(n);
        }
    }
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{name}")).exists()
}

/// Creates a persisted named `Value<u64>` in a forked child that then exits,
/// and returns the child's (now dead and reaped) pid.
fn create_in_dead_child(name: &str) -> u32 {
    use shmproc::process::{Process, StartMethod};
    let name = name.to_string();
    // The child only calls shmproc's create (glibc's malloc is fork-safe).
    let mut child = Process::closure(move || match Value::<u64>::builder().name(&name).create(7) {
        Ok(v) => {
            v.segment().persist();
            true
        }
        Err(_) => false,
    })
    .start_method(StartMethod::Fork)
    .start()
    .expect("fork");
    let pid = child.pid();
    match child.join_timeout(std::time::Duration::from_secs(10)) {
        Ok(true) => pid,
        Ok(false) => panic!("child {pid} could not create the segment"),
        Err(e) => {
            let _ = child.kill();
            let _ = child.join_timeout(std::time::Duration::from_secs(10));
            panic!("child did not finish: {e}");
        }
    }
}

#[test]
fn bench_json_prints_one_exact_object_per_case() {
    let out = shmproc(&[
        "bench",
        "--quick",
        "--json",
        "--scenario",
        "pingpong-8B",
        "--transport",
        "os-pipe",
        "--transport=raw-spin",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per case, nothing else:\n{stdout}");
    let mut transports = Vec::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let obj = v.as_object().expect("an object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = vec![
            "scenario",
            "transport",
            "metric",
            "median",
            "p99",
            "runs",
            "ratio",
            "ratio_lo",
            "ratio_hi",
            "baseline",
            "drift",
            "drifting",
            "unsteady",
            "floor_ns",
            "placement",
        ];
        let mut got = keys.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{line}");
        assert_eq!(obj["scenario"], "pingpong-8B");
        assert_eq!(obj["metric"], "rtt_ns");
        let median = obj["median"].as_f64().expect("median is a number");
        let p99 = obj["p99"].as_f64().expect("ping-pong has a p99");
        assert!(median > 0.0 && p99 >= median, "{line}");
        assert!(obj["runs"].as_u64().expect("runs is an integer") > 0, "{line}");
        // Both rows are paired (raw-spin is the scenario's baseline: ratio 1).
        let (r, lo, hi) = (obj["ratio"].as_f64(), obj["ratio_lo"].as_f64(), obj["ratio_hi"].as_f64());
        let (r, lo, hi) = (r.expect("a ratio"), lo.expect("ratio_lo"), hi.expect("ratio_hi"));
        assert!(lo <= r && r <= hi && lo > 0.0, "{line}");
        if obj["transport"] == "os-pipe" {
            assert_eq!(obj["baseline"], "raw-spin", "{line}");
        } else {
            assert_eq!((r, obj["baseline"].is_null()), (1.0, true), "{line}");
        }
        assert!(obj["drift"].as_f64().is_some_and(|d| d > 0.0), "every case is probed: {line}");
        assert!(obj["drifting"].is_boolean(), "{line}");
        assert!(obj["unsteady"].is_boolean(), "{line}");
        if obj["baseline"].is_null() {
            assert_eq!(obj["unsteady"], false, "a baseline's own row is never unsteady: {line}");
        }
        assert!(obj["floor_ns"].as_f64().is_some_and(|f| f > 0.0), "every case is probed: {line}");
        assert!(!obj["placement"].as_str().expect("placement").is_empty(), "{line}");
        transports.push(obj["transport"].as_str().unwrap().to_string());
    }
    transports.sort();
    assert_eq!(transports, ["os-pipe", "raw-spin"]);
    assert!(stderr.contains("parent pinned to CPU") || stderr.contains("one CPU allowed"), "{stderr}");
}

/// The iceoryx2 cases run under a file prefix and root directory of the
/// bench's own, and the bench removes them at the end: nothing new named
/// `iox2_*` stays in /dev/shm (iceoryx2 itself leaves its `global_mgmt`),
/// and no root directory stays in the temporary directory.
#[cfg(feature = "peers")]
#[test]
fn bench_leaves_no_iceoryx2_files_behind() {
    use std::collections::BTreeSet;
    use std::process::Stdio;
    let iox2 = || -> BTreeSet<String> {
        std::fs::read_dir("/dev/shm")
            .expect("read /dev/shm")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("iox2_"))
            .collect()
    };
    let before = iox2();
    let args = ["bench", "--quick", "--scenario", "pingpong-8B", "--transport", "raw-spin", "--transport", "iceoryx2"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmproc"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run shmproc");
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    // Drained on a thread, so that a hung bench fails the wait below.
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let status = wait_within(&mut child, std::time::Duration::from_secs(120), &args);
    let stdout = drain.join().unwrap_or_default();
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("iceoryx2"), "the iceoryx2 case ran: {stdout}");
    let left: Vec<String> = iox2().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    let root = std::env::temp_dir().join(format!("shmproc-bench-iox2-{pid}"));
    assert!(!root.exists(), "{} was left", root.display());
}

#[test]
fn bench_table_has_the_paired_ratio_column_and_the_plot() {
    let svg = std::env::temp_dir().join(format!("shmproc-test-cli-{}.svg", std::process::id()));
    let svg_path = svg.to_str().expect("utf-8 temp dir");
    let out =
        shmproc(&["bench", "--quick", "--scenario", "stream-64KiB", "--transport", "os-pipe", "--plot", svg_path]);
    let stdout = text(&out.stdout);
    let picture = std::fs::read_to_string(&svg).unwrap_or_default();
    let _ = std::fs::remove_file(&svg);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("vs baseline [min-max]") && stdout.contains("x raw-ring ["), "{stdout}");
    assert!(stdout.contains("bytes_per_s") && stdout.contains("placement") && stdout.contains(" floor "), "{stdout}");
    assert!(picture.starts_with("<svg") && picture.contains("os-pipe"), "{picture}");
}

#[test]
fn ls_json_and_info_decode_headers_and_reject_foreign_entries() {
    let p = prefix();
    let live = format!("{p}live");
    let foreign = format!("{p}foreign");
    let _cleanup = Cleanup(vec![live.clone(), foreign.clone()]);
    let _v = Value::<u64>::builder().name(&live).create(1).expect("create");
    std::fs::write(format!("/dev/shm/{foreign}"), vec![0u8; 4096]).expect("write foreign entry");

    let out = shmproc(&["ls", "--json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let entries: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let ours = entries.iter().find(|e| e["name"] == live.as_str()).unwrap_or_else(|| panic!("{live}: {stdout}"));
    assert_eq!((&ours["shmproc"], &ours["kind"], &ours["type"]), (&true.into(), &"Value".into(), &"u64".into()));
    assert_eq!(ours["creator_pid"].as_u64(), Some(u64::from(std::process::id())));
    assert_eq!((&ours["creator_alive"], &ours["in_use"], &ours["ready"]), (&true.into(), &true.into(), &true.into()));
    let theirs = entries.iter().find(|e| e["name"] == foreign.as_str()).expect("foreign entry listed");
    assert_eq!(theirs["shmproc"], false);
    assert_eq!(theirs["error"], "not shmproc");

    let out = shmproc(&["info", &live]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("kind:          Value") && stdout.contains("u64 (size 8, align 8)"), "{stdout}");
    let out = shmproc(&["info", "--json", &format!("/{live}")]);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("one JSON object");
    assert_eq!((v["name"].as_str(), v["payload_size"].as_u64().is_some()), (Some(live.as_str()), true));

    let out = shmproc(&["info", &foreign]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not shmproc"), "{}", text(&out.stderr));
    // A shmproc magic followed by garbage: a precise "corrupt" error, no panic.
    let mut bytes = vec![0xffu8; 4096];
    bytes[..8].copy_from_slice(&shmproc::header::MAGIC.to_le_bytes());
    std::fs::write(format!("/dev/shm/{foreign}"), bytes).expect("rewrite foreign entry");
    let out = shmproc(&["info", &foreign]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("corrupt shmproc header"), "{}", text(&out.stderr));
    let out = shmproc(&["info", &format!("{p}missing")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open"), "{}", text(&out.stderr));
    drop(v);
}

#[test]
fn unknown_names_and_flags_are_usage_errors() {
    for args in [
        &["bench", "--scenario", "pingpong-9B"][..],
        &["bench", "--transport", "carrier-pigeon"],
        &["bench", "--frobnicate"],
        &["--scenario=nope"],
        &["frobnicate"],
        &["gc", "--force"],
        &["bench", "--scenario", "stream-64KiB", "--transport", "raw-spin"], // matches no case
    ] {
        let out = shmproc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(text(&out.stderr).to_lowercase().contains("usage:"), "{args:?}: {}", text(&out.stderr));
    }
    let out = shmproc(&["help"]);
    assert!(out.status.success() && text(&out.stdout).to_lowercase().contains("usage:"));
    // Per-command help.
    let out = shmproc(&["gc", "--help"]);
    assert!(out.status.success() && text(&out.stdout).contains("--dry-run"), "{}", text(&out.stdout));
}

#[test]
fn ls_lists_segments_and_marks_foreign_entries() {
    let p = prefix();
    let live = format!("{p}live");
    let foreign = format!("{p}foreign");
    let _cleanup = Cleanup(vec![live.clone(), foreign.clone()]);
    let v = Value::<u64>::builder().name(&live).create(1).expect("create");
    std::fs::write(format!("/dev/shm/{foreign}"), vec![0u8; 4096]).expect("write foreign entry");
    let out = shmproc(&["ls"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let row = stdout.lines().find(|l| l.starts_with(&live)).unwrap_or_else(|| panic!("{live} not listed:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "Value", "{row}");
    assert_eq!(cols[2], "u64", "{row}");
    assert!(cols.contains(&std::process::id().to_string().as_str()), "creator pid: {row}");
    assert_eq!(&cols[cols.len() - 2..], ["yes", "yes"], "alive and mapped: {row}");
    let row = stdout.lines().find(|l| l.starts_with(&foreign)).expect("foreign entry listed");
    assert!(row.contains("(not shmproc)"), "{row}");
    drop(v);
}

#[test]
fn gc_removes_only_dead_unused_segments() {
    let p = prefix();
    let live = format!("{p}live");
    let dead = format!("{p}dead");
    let dead_mapped = format!("{p}dead-mapped");
    let foreign = format!("{p}foreign");
    let _cleanup = Cleanup(vec![live.clone(), dead.clone(), dead_mapped.clone(), foreign.clone()]);

    let live_v = Value::<u64>::builder().name(&live).create(1).expect("create");
    live_v.segment().persist();
    let dead_pid = create_in_dead_child(&dead);
    create_in_dead_child(&dead_mapped);
    // A dead creator's segment that this process still maps: in use, so kept.
    let mapped = Value::<u64>::open(&dead_mapped).expect("open");
    assert_eq!(mapped.get().ok(), Some(7));
    std::fs::write(format!("/dev/shm/{foreign}"), vec![0u8; 4096]).expect("write foreign entry");
    assert!(exists(&live) && exists(&dead) && exists(&dead_mapped));

    let out = shmproc(&["gc", "--dry-run", "--prefix", &p]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("would remove {dead} (")), "{stdout}");
    assert!(stdout.contains(&format!("creator pid {dead_pid} dead")), "{stdout}");
    assert!(stdout.contains(&format!("kept    {live}: creator pid {} is alive", std::process::id())), "{stdout}");
    assert!(stdout.contains(&format!("kept    {dead_mapped}:")), "{stdout}");
    assert!(exists(&live) && exists(&dead) && exists(&dead_mapped) && exists(&foreign), "dry run removed something");

    let out = shmproc(&["gc", "--prefix", &p]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("removed {dead} (")), "{stdout}");
    assert!(!exists(&dead), "the dead creator's segment is gone");
    assert!(exists(&live), "a live creator's segment stays");
    assert!(exists(&dead_mapped), "a segment still mapped stays");
    assert!(exists(&foreign), "a non-shmproc entry stays");
    assert_eq!(live_v.get().ok(), Some(1));
    drop(mapped);
}

/// A creator killed while it builds a named object leaves only the object's
/// temporary name (`.NAME~PID-RANDOM`), never the name itself: `gc` removes
/// it once that pid is dead (matching `--prefix` against NAME), keeps one
/// whose builder is alive, and `ls` says what it is.
#[test]
fn gc_removes_the_temporary_names_of_dead_builders() {
    let p = prefix();
    let dead_pid = {
        let mut c = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    // As a killed creator leaves it: sized, reserved, the header not yet written.
    let abandoned = format!(".{p}jobs~{dead_pid}-00000000000000aa");
    let building = format!(".{p}jobs~{}-00000000000000bb", std::process::id());
    // Named like one, but holding someone's data: never removed.
    let lookalike = format!(".{p}data~{dead_pid}-00000000000000cc");
    struct RemoveFiles(Vec<String>);
    impl Drop for RemoveFiles {
        fn drop(&mut self) {
            for f in &self.0 {
                let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
            }
        }
    }
    let _cleanup = RemoveFiles(vec![abandoned.clone(), building.clone(), lookalike.clone()]);
    for f in [&abandoned, &building] {
        std::fs::write(format!("/dev/shm/{f}"), vec![0u8; 4096]).expect("write a temporary name");
    }
    std::fs::write(format!("/dev/shm/{lookalike}"), b"precious user data").expect("write a look-alike");
    // The name itself does not exist: it can be created at once.
    let jobs = format!("{p}jobs");
    let _jobs = Cleanup(vec![jobs.clone()]);
    assert!(matches!(Value::<u64>::open(&jobs), Err(shmproc::OpenError::NotFound { .. })));

    let out = shmproc(&["ls"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("{p}jobs being created by pid {dead_pid}")), "{stdout}");

    let out = shmproc(&["gc", "--prefix", &p]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("removed {abandoned} (")), "{stdout}");
    assert!(stdout.contains(&format!("left by pid {dead_pid} (dead)")), "{stdout}");
    assert!(stdout.contains(&format!("kept    {building}: being created by pid {}", std::process::id())), "{stdout}");
    assert!(!exists(&abandoned), "the dead builder's temporary name is gone");
    assert!(exists(&building), "a live builder's temporary name stays");
    assert!(stdout.contains(&format!("kept    {lookalike}: named like a segment being created")), "{stdout}");
    assert!(exists(&lookalike), "a file that is not a segment stays");
    Value::<u64>::builder().name(&jobs).create(1).expect("the name is free");
}

/// A dead builder's temporary name that a live process still maps (its fd
/// closed) is kept, even when that process also maps a file whose path is
/// not UTF-8: `gc` used to read `/proc/PID/maps` as a string, and a process
/// whose maps did not parse as one was skipped, its mappings unseen.
#[test]
fn gc_keeps_what_a_process_maps_whatever_else_it_maps() {
    use std::os::unix::ffi::OsStrExt;
    let p = prefix();
    let dead_pid = {
        let mut c = Command::new("true").spawn().expect("spawn true");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    let abandoned = format!(".{p}mapped~{dead_pid}-00000000000000dd");
    let odd = {
        use std::os::unix::ffi::OsStringExt;
        let mut b = format!("/tmp/{p}-").into_bytes();
        b.push(0xff);
        std::path::PathBuf::from(std::ffi::OsString::from_vec(b))
    };
    struct RemoveFiles(Vec<std::path::PathBuf>);
    impl Drop for RemoveFiles {
        fn drop(&mut self) {
            for f in &self.0 {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    let shm_path = std::path::PathBuf::from(format!("/dev/shm/{abandoned}"));
    let _cleanup = RemoveFiles(vec![shm_path.clone(), odd.clone()]);
    std::fs::write(&shm_path, vec![0u8; 4096]).expect("write a temporary name");
    std::fs::write(&odd, vec![1u8; 4096]).expect("write a file with a non-UTF-8 name");
    let paths: Vec<std::ffi::CString> =
        [&shm_path, &odd].iter().map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()).collect();
    let mut fds = [0i32; 2];
    // SAFETY: a pipe into our own array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only makes raw system calls and `_exit`s.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        // SAFETY: raw calls on our own paths and fds; `_exit` ends the child.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                let m = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
                if fd < 0 || m == libc::MAP_FAILED {
                    libc::_exit(1);
                }
                libc::close(fd);
            }
            libc::write(fds[1], b"x".as_ptr().cast(), 1);
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
    let _kill = Kill(child);
    let mut b = [0u8; 1];
    let mut poll = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd of ours; then a read of one byte into `b`.
    let ready = unsafe { libc::poll(&mut poll, 1, 30_000) == 1 && libc::read(fds[0], b.as_mut_ptr().cast(), 1) == 1 };
    assert!(ready, "the child did not map the files");
    let out = shmproc(&["gc", "--prefix", &p]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("kept    {abandoned}: its creator pid {dead_pid} is dead, but a process still maps")),
        "{stdout}"
    );
    assert!(shm_path.exists(), "a mapped temporary name was removed");
}

/// `shmproc ls | head -1`: the reader goes away before the command writes.
/// `ls` and `gc` must end quietly (killed by SIGPIPE, as other tools are),
/// not panic in `println!` ("failed printing to stdout: Broken pipe").
#[test]
fn ls_and_gc_end_quietly_when_their_reader_is_gone() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::time::Duration;
    let p = prefix();
    let name = format!("{p}listed");
    let _cleanup = Cleanup(vec![name.clone()]);
    let _v = Value::<u64>::create(&name, 1).expect("a segment for ls to list");
    for args in [vec!["ls"], vec!["gc", "--dry-run", "--prefix", p.as_str()]] {
        let mut fds = [0i32; 2];
        // SAFETY: a pipe into our own array; its read end is closed at once,
        // so every write to the other end fails (EPIPE / SIGPIPE).
        let write_end = unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe");
            libc::close(fds[0]);
            std::os::fd::OwnedFd::from_raw_fd(fds[1])
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmproc"))
            .args(&args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shmproc");
        let status = wait_within(&mut child, Duration::from_secs(60), &args);
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).expect("stderr");
        assert!(!stderr.contains("panicked"), "shmproc {args:?} panicked: {stderr}");
        assert_eq!(status.signal(), Some(libc::SIGPIPE), "shmproc {args:?}: {status:?} {stderr}");
    }
}

/// Names in /dev/shm are chosen by whoever creates them: one with a newline
/// and an escape sequence must not forge a line of `ls` or drive the
/// terminal. Text output shows control characters escaped.
#[test]
fn ls_shows_control_characters_in_names_escaped() {
    let p = prefix();
    let hostile = format!("{p}a\nremoved everything\x1b[2J");
    // Not a valid segment name, so removed as a file (shmproc::unlink refuses it).
    struct RemoveFile(String);
    impl Drop for RemoveFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveFile(format!("/dev/shm/{hostile}"));
    std::fs::write(format!("/dev/shm/{hostile}"), vec![0u8; 4096]).expect("write hostile entry");
    let out = shmproc(&["ls"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains('\x1b'), "an escape sequence reached the terminal:\n{stdout:?}");
    assert!(!stdout.lines().any(|l| l.starts_with("removed everything")), "a forged line:\n{stdout}");
    assert!(stdout.contains(&format!("{p}a\\nremoved everything\\u{{1b}}[2J")), "{stdout}");
}
