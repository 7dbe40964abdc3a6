//! `shmproc ls` and `shmproc gc`: the shmproc segments in `/dev/shm`.
//!
//! The entries come from [`shmproc::inspect::list_shm`]. Each is opened
//! read-only (`O_NOFOLLOW`, so a symlink is never followed), measured with
//! `fstat` on that fd, and its first 128 bytes are read and validated like
//! `open` does ([`shmproc::inspect::header_summary`]). Entries that are not
//! shmproc segments are listed as such and never removed. The creator checks
//! use [`shmproc::inspect::process_alive`] and
//! [`shmproc::inspect::process_start_ticks`].
//!
//! Direct calls: the read-only open goes through `rustix::fs::open` (std's
//! `OpenOptions` would need libc's flag constants) and the tick rate of
//! `/proc` start times through `rustix::param::clock_ticks_per_second`.
//!
//! `gc` is conservative. It removes a name only if all of these hold:
//! * the header is a valid shmproc header (corrupt ones are reported, kept);
//! * the segment belongs to the user running `gc`;
//! * its creator pid does not exist, or the process that has that pid now
//!   started more than 2 s after the segment last changed status (`ctime`,
//!   which is never earlier than its creation), so it cannot be the creator:
//!   the pid was reused;
//! * no process maps it or holds an fd on it (per `/proc/*/maps` and
//!   `/proc/*/fd`, compared by device and inode), since a forked child may go on
//!   using a segment after its creator has exited;
//! * the name still refers to the same inode just before `unlink`.
//!
//! A named object is built under a temporary name (`.NAME~PID-RANDOM`) and
//! renamed into place once ready; a builder killed on the way leaves that
//! name. `gc` removes it under the same rules, with the pid in the name as
//! the creator (the header may not have been written), and matches
//! `--prefix` against `NAME`.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{Mode, OFlags};
use shmproc::inspect::{header_summary, pending_creator, process_alive, process_start_ticks, HeaderSummary, SHM_DIR};
const HEADER_SIZE: usize = shmproc::header::HEADER_SIZE;

/// What one `/dev/shm` entry is.
#[derive(Debug)]
pub enum Entry {
    /// A valid shmproc segment.
    Segment {
        /// Name without the leading `/`.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Owner uid.
        uid: u32,
        /// (device, inode), to recognise it in `/proc`.
        id: (u64, u64),
        /// Status change time (seconds since the epoch): not before creation.
        ctime: i64,
        /// The header.
        header: HeaderSummary,
    },
    /// Not a shmproc segment (or a corrupt one), with the reason.
    Other {
        /// Name.
        name: String,
        /// Size in bytes (0 if it could not be opened).
        size: u64,
        /// Why it is not listed as a segment.
        why: String,
    },
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Segment { name, .. } | Entry::Other { name, .. } => name,
        }
    }
}

/// Reads and classifies one entry of `/dev/shm`; the temporary name of an
/// object being built (see [`pending_creator`]) says so when its header is
/// not there yet.
pub fn inspect(name: &str) -> Entry {
    match (inspect_file(name), pending_creator(name)) {
        (Entry::Other { name, size, why }, Some((pid, target))) if size > 0 => {
            Entry::Other { why: format!("{target} being created by pid {pid} (or left by it): {why}"), name, size }
        }
        (e, _) => e,
    }
}

fn inspect_file(name: &str) -> Entry {
    let other = |size: u64, why: String| Entry::Other { name: name.to_string(), size, why };
    let path = format!("{SHM_DIR}/{name}");
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(&path, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return other(0, format!("cannot open: {}", std::io::Error::from(e))),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return other(0, format!("cannot stat: {e}")),
    };
    if !meta.is_file() {
        return other(0, "not a regular file".into());
    }
    let size = meta.len();
    if size < HEADER_SIZE as u64 {
        return other(size, "too small for a shmproc header".into());
    }
    let mut bytes = [0u8; HEADER_SIZE];
    if let Err(e) = (&file).read_exact(&mut bytes) {
        return other(size, format!("cannot read: {e}"));
    }
    if bytes[..8] != shmproc::header::MAGIC.to_le_bytes() {
        return other(size, "not shmproc".into());
    }
    match header_summary(&bytes, size) {
        Ok(header) => Entry::Segment {
            name: name.to_string(),
            size,
            uid: meta.uid(),
            id: (meta.dev(), meta.ino()),
            ctime: meta.ctime(),
            header,
        },
        Err(e) => other(size, format!("corrupt shmproc header: {e}")),
    }
}

/// Boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Whether the creator of a segment whose status changed at `ctime` (epoch
/// seconds) may still run: a process has `pid` and did not start clearly after
/// `ctime`. Errs on the side of "alive".
pub fn creator_alive(pid: u32, ctime: i64) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let (Some(ticks), Some(boot)) = (process_start_ticks(pid), boot_time()) else {
        return true;
    };
    let started = boot + (ticks / rustix::param::clock_ticks_per_second().max(1)) as i64;
    // btime has 1 s resolution and start times 1 tick: allow 2 s of slack.
    started <= ctime + 2
}

/// Every regular file of `/dev/shm`, sorted by name.
pub fn scan() -> std::io::Result<Vec<Entry>> {
    Ok(shmproc::inspect::list_shm()?.iter().map(|e| inspect(&e.name)).collect())
}

/// (device, inode) of every `/dev/shm` object some process maps or holds open.
/// Processes whose `/proc` entries cannot be read are skipped (as root, none are).
pub fn in_use() -> HashSet<(u64, u64)> {
    let mut used = HashSet::new();
    let shm_dev = std::fs::metadata(SHM_DIR).map(|m| m.dev()).ok();
    let Ok(procs) = std::fs::read_dir("/proc") else { return used };
    for p in procs.flatten() {
        let pid = p.file_name();
        let Some(pid) = pid.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
        // Open fds first, then mappings: a process that opens, maps and
        // closes in between is seen by one of the two (the other order could
        // miss it). A process may hold the fd without mapping it.
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let is_shm = std::fs::read_link(fd.path())
                    .map(|t| t.to_string_lossy().starts_with("/dev/shm/"))
                    .unwrap_or(false);
                if is_shm {
                    if let Ok(m) = std::fs::metadata(fd.path()) {
                        used.insert((m.dev(), m.ino()));
                    }
                }
            }
        }
        // Mappings: "addr perms offset dev inode path". Read as bytes: one
        // path that is not UTF-8 must not hide the process's other mappings.
        if let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) {
            for line in maps.split(|&b| b == b'\n') {
                let mut f = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
                let (Some(_), Some(_), Some(_), Some(_), Some(ino), Some(path)) =
                    (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                // memfds show as "/memfd:..."; named segments as "/dev/shm/<name>".
                if path.starts_with(b"/dev/shm/") {
                    let ino = std::str::from_utf8(ino).ok().and_then(|i| i.parse::<u64>().ok());
                    if let (Some(dev), Some(ino)) = (shm_dev, ino) {
                        used.insert((dev, ino));
                    }
                }
            }
        }
    }
    used
}

/// `s` for a terminal: control characters (a newline, an escape sequence)
/// escaped as Rust writes them, so that a file name or a type name written by
/// another user cannot forge lines or drive the terminal (`--json` escapes
/// them itself).
fn shown(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn human_size(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// One entry as `ls --json` and `info --json` write it (serde_json): every
/// key present on every line, `null` where it does not apply.
#[derive(Debug, serde::Serialize)]
struct JsonEntry<'a> {
    name: &'a str,
    /// true: a valid shmproc segment; false: foreign or corrupt (see `error`).
    shmproc: bool,
    size: u64,
    kind: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    type_size: Option<u32>,
    type_align: Option<u32>,
    payload_size: Option<u64>,
    ready: Option<bool>,
    creator_pid: Option<u32>,
    creator_alive: Option<bool>,
    in_use: Option<bool>,
    uid: Option<u32>,
    error: Option<&'a str>,
}

fn json_entry<'a>(e: &'a Entry, used: &HashSet<(u64, u64)>) -> JsonEntry<'a> {
    match e {
        Entry::Segment { name, size, uid, id, ctime, header } => JsonEntry {
            name,
            shmproc: true,
            size: *size,
            kind: Some(header.kind.to_string()),
            ty: Some(header.ty.name().to_string()).filter(|t| !t.is_empty()),
            type_size: Some(header.ty.size),
            type_align: Some(header.ty.align),
            payload_size: Some(header.payload_size),
            ready: Some(header.ready),
            creator_pid: Some(header.creator_pid),
            creator_alive: Some(creator_alive(header.creator_pid, *ctime)),
            in_use: Some(used.contains(id)),
            uid: Some(*uid),
            error: None,
        },
        Entry::Other { name, size, why } => JsonEntry {
            name,
            shmproc: false,
            size: *size,
            kind: None,
            ty: None,
            type_size: None,
            type_align: None,
            payload_size: None,
            ready: None,
            creator_pid: None,
            creator_alive: None,
            in_use: None,
            uid: None,
            error: Some(why),
        },
    }
}

/// `shmproc info NAME`: the header of one segment, decoded (one JSON object
/// with `json`); exit code 1 with the precise reason for a missing, foreign or
/// corrupt entry.
pub fn info(name: &str, json: bool) -> i32 {
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.is_empty() || name.contains('/') {
        eprintln!("shmproc info: '{}' is not a segment name (a file name in {SHM_DIR})", shown(name));
        return 1;
    }
    let entry = inspect(name);
    let used = in_use();
    if json {
        // Serialising strings and numbers cannot fail.
        println!("{}", serde_json::to_string(&json_entry(&entry, &used)).expect("an entry serialises"));
    }
    match &entry {
        Entry::Segment { size, uid, id, ctime, header, .. } => {
            if !json {
                let ty = header.ty.name();
                println!("name:          {}", shown(name));
                println!("kind:          {}", header.kind);
                println!(
                    "state:         {}",
                    if header.ready { "ready" } else { "not ready (being initialised, or its creator died mid-way)" }
                );
                println!(
                    "element type:  {} (size {}, align {})",
                    if ty.is_empty() { "-".to_string() } else { shown(ty) },
                    header.ty.size,
                    header.ty.align
                );
                println!("size:          {} ({size} bytes; payload {} bytes)", human_size(*size), header.payload_size);
                println!(
                    "creator:       pid {} ({})",
                    header.creator_pid,
                    if creator_alive(header.creator_pid, *ctime) { "alive" } else { "dead" }
                );
                println!("owner uid:     {uid}");
                println!("in use:        {}", if used.contains(id) { "yes" } else { "no" });
            }
            0
        }
        Entry::Other { why, .. } => {
            eprintln!("shmproc info: {SHM_DIR}/{}: {}", shown(name), shown(why));
            1
        }
    }
}

/// `shmproc ls`: prints the table (or one JSON object per entry); returns the exit code.
pub fn ls(json: bool) -> i32 {
    let entries = match scan() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shmproc ls: cannot read {SHM_DIR}: {e}");
            return 1;
        }
    };
    let used = in_use();
    if json {
        for e in &entries {
            // Serialising strings and numbers cannot fail.
            println!("{}", serde_json::to_string(&json_entry(e, &used)).expect("an entry serialises"));
        }
        return 0;
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "KIND".into(),
        "TYPE".into(),
        "SIZE".into(),
        "CREATOR".into(),
        "ALIVE".into(),
        "IN USE".into(),
    ]];
    for e in &entries {
        rows.push(match e {
            Entry::Segment { name, size, id, ctime, header, .. } => [
                shown(name),
                format!("{}{}", header.kind, if header.ready { "" } else { " (not ready)" }),
                if header.ty.name().is_empty() { "-".into() } else { shown(header.ty.name()) },
                human_size(*size),
                header.creator_pid.to_string(),
                if creator_alive(header.creator_pid, *ctime) { "yes" } else { "no" }.into(),
                if used.contains(id) { "yes" } else { "no" }.into(),
            ],
            Entry::Other { name, size, why } => [
                shown(name),
                format!("({})", shown(why)),
                "-".into(),
                human_size(*size),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(width).enumerate() {
            if i == 3 || i == 4 {
                line.push_str(&format!("{c:>w$}  "));
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
    let n = entries.iter().filter(|e| matches!(e, Entry::Segment { .. })).count();
    println!("{n} shmproc segment(s), {} other entr(y/ies) in {SHM_DIR}", entries.len() - n);
    0
}

/// `shmproc gc`: removes dead creators' segments (or says which it would);
/// returns the exit code.
pub fn gc(dry_run: bool, prefixes: &[String]) -> i32 {
    let entries = match scan() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shmproc gc: cannot read {SHM_DIR}: {e}");
            return 1;
        }
    };
    let me = rustix::process::geteuid().as_raw();
    let used = in_use();
    let (mut removed, mut kept, mut failed) = (0, 0, 0);
    for e in &entries {
        // A temporary name (an object being built) matches by the name it will get.
        let pending = pending_creator(e.name());
        let target = pending.map_or(e.name(), |(_, n)| n);
        if !prefixes.is_empty() && !prefixes.iter().any(|p| target.starts_with(p.as_str())) {
            continue;
        }
        if let Some((pid, _)) = pending {
            match gc_pending(e.name(), pid, me, &used, dry_run) {
                Gc::Removed => removed += 1,
                Gc::Kept => kept += 1,
                Gc::Failed => failed += 1,
            }
            continue;
        }
        let (name, size, uid, id, ctime, header) = match e {
            Entry::Segment { name, size, uid, id, ctime, header } => (name, size, uid, id, ctime, header),
            Entry::Other { name, why, .. } => {
                if why.starts_with("corrupt") {
                    println!("kept    {}: {}", shown(name), shown(why));
                }
                continue;
            }
        };
        let keep = |why: String| {
            println!("kept    {}: {}", shown(name), shown(&why));
        };
        if *uid != me {
            keep(format!("owned by uid {uid}, not by this user"));
            kept += 1;
            continue;
        }
        if creator_alive(header.creator_pid, *ctime) {
            keep(format!("creator pid {} is alive", header.creator_pid));
            kept += 1;
            continue;
        }
        if used.contains(id) {
            keep(format!("creator pid {} is dead, but a process still maps or holds it", header.creator_pid));
            kept += 1;
            continue;
        }
        let what =
            format!("{} {}, creator pid {} dead, not in use", header.kind, human_size(*size), header.creator_pid);
        if dry_run {
            println!("would remove {} ({what})", shown(name));
            removed += 1;
            continue;
        }
        // The name must still refer to the inode we inspected.
        let same =
            std::fs::symlink_metadata(format!("{SHM_DIR}/{name}")).map(|m| (m.dev(), m.ino()) == *id).unwrap_or(false);
        if !same {
            keep("it changed while gc looked at it".into());
            kept += 1;
            continue;
        }
        match shmproc::unlink(name) {
            Ok(()) => {
                println!("removed {} ({what})", shown(name));
                removed += 1;
            }
            Err(err) => {
                eprintln!("shmproc gc: cannot remove {}: {err}", shown(name));
                failed += 1;
            }
        }
    }
    println!(
        "{} {removed} segment(s), kept {kept}{}",
        if dry_run { "would remove" } else { "removed" },
        if failed > 0 { format!(", {failed} failed") } else { String::new() }
    );
    i32::from(failed > 0)
}

/// What `gc` did with one name.
enum Gc {
    Removed,
    Kept,
    Failed,
}

/// `gc` for the temporary name of an object being built (see
/// [`pending_creator`]): removed once its builder `pid` is dead (or is a
/// later process with a reused pid) and nothing maps or holds it.
fn gc_pending(name: &str, pid: u32, me: u32, used: &HashSet<(u64, u64)>, dry_run: bool) -> Gc {
    let keep = |why: String| {
        println!("kept    {}: {}", shown(name), shown(&why));
        Gc::Kept
    };
    let path = format!("{SHM_DIR}/{name}");
    let Ok(meta) = std::fs::symlink_metadata(&path) else { return keep("it vanished while gc looked at it".into()) };
    if !meta.is_file() {
        return keep("not a regular file".into());
    }
    if meta.uid() != me {
        return keep(format!("owned by uid {}, not by this user", meta.uid()));
    }
    if creator_alive(pid, meta.ctime()) {
        return keep(format!("being created by pid {pid}, which is alive"));
    }
    let id = (meta.dev(), meta.ino());
    if used.contains(&id) {
        return keep(format!("its creator pid {pid} is dead, but a process still maps or holds it"));
    }
    // Only what a builder leaves: empty, zeros where the header goes, or a
    // shmproc header. A file of someone else's that merely has such a name
    // is not ours to remove.
    // Read through the file already checked: opened as `ls` does (never
    // through a symlink, never blocking on a FIFO put there meanwhile), and
    // the very inode looked at above. Any failure keeps the file.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(&path, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return keep(format!("cannot open it to look inside: {}", std::io::Error::from(e))),
    };
    match file.metadata() {
        Ok(m) if m.is_file() && (m.dev(), m.ino()) == id => {}
        Ok(_) => return keep("it changed while gc looked at it".into()),
        Err(e) => return keep(format!("cannot stat it: {e}")),
    }
    let mut first = [0u8; 8];
    let n = match (&file).read(&mut first) {
        Ok(n) => n,
        Err(e) => return keep(format!("cannot read it: {e}")),
    };
    if n > 0 && first != [0; 8] && first != shmproc::header::MAGIC.to_le_bytes() {
        return keep("named like a segment being created, but it is not one".into());
    }
    let what = format!("{}, left by pid {pid} (dead) while it was being created", human_size(meta.len()));
    if dry_run {
        println!("would remove {} ({what})", shown(name));
        return Gc::Removed;
    }
    let same = std::fs::symlink_metadata(&path).map(|m| (m.dev(), m.ino()) == id).unwrap_or(false);
    if !same {
        return keep("it changed while gc looked at it".into());
    }
    // Not `shmproc::unlink`: a temporary name starts with '.', which user names cannot.
    match std::fs::remove_file(&path) {
        Ok(()) => {
            println!("removed {} ({what})", shown(name));
            Gc::Removed
        }
        Err(err) => {
            eprintln!("shmproc gc: cannot remove {}: {err}", shown(name));
            Gc::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_started_after_the_segment_is_not_its_creator() {
        let me = std::process::id();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(creator_alive(me, now), "we run, and started before now");
        // A segment that last changed an hour before we started: its creator
        // was some earlier process that had our pid.
        let boot = boot_time().expect("btime in /proc/stat");
        assert!(!creator_alive(me, boot - 3600), "a reused pid is not the creator");
        // A pid with no process.
        assert!(!creator_alive(0, now));
    }

    #[test]
    fn inspect_classifies_entries() {
        let name = format!("shmproc-test-inspect-{}", std::process::id());
        let path = format!("{SHM_DIR}/{name}");
        std::fs::write(&path, b"SHMPROC\0 but far too short").unwrap();
        let e = inspect(&name);
        std::fs::write(&path, vec![0u8; 200]).unwrap();
        let e2 = inspect(&name);
        let mut corrupt = vec![0u8; 4096];
        corrupt[..8].copy_from_slice(b"SHMPROC\0");
        std::fs::write(&path, &corrupt).unwrap();
        let e3 = inspect(&name);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(e, Entry::Other { ref why, .. } if why.contains("too small")), "{e:?}");
        assert!(matches!(e2, Entry::Other { ref why, .. } if why == "not shmproc"), "{e2:?}");
        assert!(matches!(e3, Entry::Other { ref why, .. } if why.starts_with("corrupt")), "{e3:?}");
        assert!(matches!(inspect(&name), Entry::Other { ref why, .. } if why.starts_with("cannot open")));
    }
}
