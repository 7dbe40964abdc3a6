//! What runs inside a child: the typed trampoline, the report sent back to the
//! parent, the panic capture, and the `fn`-by-offset encoding.
//!
//! ## Report (child to parent, one datagram on a `SOCK_SEQPACKET` socket pair)
//! Sent once, after the target returned or panicked, just before the child exits:
//!
//! | bytes 0..8 | byte 8 | rest |
//! |---|---|---|
//! | token (`u64` LE) | [`TAG_OK`] (0) | postcard bytes of the target's `R` |
//! | token | [`TAG_REPORT`] (1) | postcard [`Report`] (panic message and location, or a serde failure) |
//! | token | [`TAG_IN_MEMFD`] (2) | nothing; a memfd passed with `SCM_RIGHTS` holds the report (tag and rest) when it is over [`INLINE_MAX`] bytes |
//!
//! The token is unique per start in the parent. Fork and ForkServer reuse
//! report sockets from a small pool (creating and closing a socket pair per
//! child cost more than the rest of the start); a datagram with another token
//! (sent late by a descendant of an earlier child that inherited the socket)
//! is discarded.
//!
//! A datagram this small never blocks its sender, so the parent only waits for
//! the exit (one wake-up per child) and then takes the datagram without
//! blocking. No datagram means the child died before reporting.
//!
//! ## Sending a `fn` to a re-executed copy
//! A `fn(A) -> R` cannot be serialised, but the same executable loaded again
//! holds the same code at the same offset from any of its own symbols (ASLR
//! slides the whole image). The parent sends `target - anchor` and
//! `trampoline - anchor`, where `anchor` is [`anchor`] and `trampoline` is the
//! monomorphised [`trampoline::<A, R>`] that decodes `A`, calls the target and
//! encodes `R`. The child only turns the offsets back into pointers after it
//! checked that it runs the very same executable file as the parent (see
//! `exec.rs`) and that both addresses lie in the image of its executable.

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sys;
use crate::time::Deadline;

/// First byte of a report: the target returned; postcard bytes of its `R` follow.
pub(crate) const TAG_OK: u8 = 0;
/// First byte of a report: a postcard [`Report`] follows.
pub(crate) const TAG_REPORT: u8 = 1;
/// The only byte of a datagram that carries a memfd holding the whole report.
pub(crate) const TAG_IN_MEMFD: u8 = 2;
/// Largest report sent inline in the datagram; larger ones go in a memfd.
/// The parent peeks into a small stack buffer, then takes a larger report into a buffer of its exact size.
pub(crate) const INLINE_MAX: usize = 4096;
/// Largest report the parent accepts (1 GiB).
pub(crate) const MAX_REPORT: u64 = 1 << 30;

/// Size of the token that starts every report datagram.
pub(crate) const TOKEN_LEN: usize = 8;

/// How long a child waits for room to send its report: the socket should
/// hold nothing but this datagram, but another holder of its end (a
/// descendant of an earlier child) may have filled it.
pub(crate) const REPORT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one report datagram on `out` (the child's end of the report socket):
/// this child's token (little endian), then the report. A large report
/// travels in a memfd passed with `SCM_RIGHTS`. Waits for room at most
/// [`REPORT_SEND_TIMEOUT`] (then the report is lost and the parent's join
/// says so, rather than hang). The parent may be gone (`EPIPE`): there is
/// nobody to tell, so errors are ignored.
pub(crate) fn emit(out: BorrowedFd<'_>, report: &[u8]) {
    let token = ctx().map_or(0, |c| c.token).to_le_bytes();
    let by = Deadline::after(Some(REPORT_SEND_TIMEOUT));
    if report.len() <= INLINE_MAX {
        let _ = sys::send_parts_with_fds_until(out, &token, report, &[], by);
    } else if let Ok(fd) = sys::memfd_with(report) {
        let _ = sys::send_parts_with_fds_until(out, &token, &[TAG_IN_MEMFD], &[fd.as_fd()], by);
    }
}

/// Why a child has no value to report.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The target panicked.
    Panic {
        /// Panic payload as text.
        message: String,
        /// `file:line:col`.
        location: Option<String>,
    },
    /// The argument could not be decoded or the result encoded.
    Serde(String),
}

/// Exit code of a child whose target returned.
pub(crate) const EXIT_OK: i32 = 0;
/// Exit code of a child whose target panicked (as Python's 1 for an exception).
pub(crate) const EXIT_PANIC: i32 = 1;
/// Exit code of a child that refused to run the target (identity mismatch, bad gate variable).
pub(crate) const EXIT_REFUSED: i32 = 121;
/// Exit code of a re-executed copy that reached shmproc code before `init()`.
pub(crate) const EXIT_NO_INIT: i32 = 122;

/// Runs one typed target: decodes the argument, calls `func`, writes the
/// report to the fd. `Err` is a (de)serialisation failure.
pub(crate) type Trampoline = fn(usize, &[u8], BorrowedFd<'_>) -> Result<(), String>;

/// Writes `TAG_OK` and `r` to `out`. Small results are encoded on the stack,
/// so a forked child touches no heap page (each would cost a copy-on-write fault).
pub(crate) fn emit_ok<R: Serialize>(r: &R, out: BorrowedFd<'_>) -> Result<(), String> {
    let mut stack = [0u8; 128];
    stack[0] = TAG_OK;
    let n = match postcard::to_slice(r, &mut stack[1..]) {
        Ok(used) => Some(used.len()),
        Err(postcard::Error::SerializeBufferFull) => None,
        Err(e) => return Err(format!("encoding the result in the child: {e}")),
    };
    match n {
        Some(n) => emit(out, &stack[..1 + n]),
        None => {
            let v =
                postcard::to_extend(r, vec![TAG_OK]).map_err(|e| format!("encoding the result in the child: {e}"))?;
            emit(out, &v)
        }
    }
    Ok(())
}

/// The monomorphised trampoline for a `fn(A) -> R` whose address is `func`.
pub(crate) fn trampoline<A: DeserializeOwned, R: Serialize>(
    func: usize,
    args: &[u8],
    out: BorrowedFd<'_>,
) -> Result<(), String> {
    // `func` comes from `Process::builder`, here or in the parent (same executable, verified).
    // SAFETY: rebased by the checked offset from `anchor`, it is a `fn(A) -> R` for this
    // trampoline's own `A` and `R`; function pointers and `usize` have the same size.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    // Objects in the argument open here, from the fds the start method carried.
    let arg: A = crate::object::deserialize_carried(args)?;
    let r = f(arg);
    let sent = emit_ok(&r, out);
    // The child exits right after: freeing `r` would only cost copy-on-write faults.
    std::mem::forget(r);
    sent
}

/// A symbol of the executable image; offsets of targets are taken from it.
#[inline(never)]
pub(crate) fn anchor() -> usize {
    anchor as fn() -> usize as usize
}

/// Offset of `addr` from the anchor.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor()) as i64
}

/// Address at `offset` from the anchor, if it lies in the same loaded object
/// as the anchor (checked with `dladdr`).
pub(crate) fn address_at(offset: i64) -> Option<usize> {
    let addr = anchor().wrapping_add(offset as usize);
    same_object(addr).then_some(addr)
}

/// Whether `addr` belongs to the same loaded object (executable) as the anchor.
pub(crate) fn same_object(addr: usize) -> bool {
    match (sys::object_base(anchor()), sys::object_base(addr)) {
        (Some(a), Some(b)) => a == b,
        (Some(_), None) => false,
        // The loader does not know the anchor (static binary): rely on the
        // executable identity check alone.
        (None, _) => true,
    }
}

/// What a shmproc child knows about itself, from before its target runs
/// until it exits.
#[derive(Debug)]
pub(crate) struct ChildCtx<'a> {
    /// The name it was started with.
    pub(crate) name: &'a str,
    /// Its end of the report socket.
    pub(crate) report: BorrowedFd<'a>,
    /// Starts its report datagram, so that the parent can tell it from a
    /// stale one on a reused socket.
    pub(crate) token: u64,
    /// Whether a report was sent (the panic hook sends one itself, so that
    /// the message also arrives when panics abort).
    pub(crate) reported: AtomicBool,
}

impl<'a> ChildCtx<'a> {
    /// The context of a child named `name` that reports on `report` with `token`.
    pub(crate) fn new(name: &'a str, report: BorrowedFd<'a>, token: u64) -> Self {
        ChildCtx { name, report, token, reported: AtomicBool::new(false) }
    }
}

/// The context of this process if it is a shmproc child (null in any other
/// process). One static, so a forked child dirties one page for it.
///
/// Set only by [`enter_spawned`] (a `'static` context) and by [`run_forked`],
/// which never returns, so the context it borrows outlives every later read:
/// a non-null `CTX` is valid for the rest of the process.
static CTX: AtomicPtr<ChildCtx<'static>> = AtomicPtr::new(std::ptr::null_mut());
/// A [`sys::ForkSafeOnce`]: a raw `fork` while another thread installs the
/// hook leaves the child no `Once` held for ever (std's own panic-hook lock,
/// taken briefly by `take_hook`/`set_hook`, is another matter).
static HOOK: sys::ForkSafeOnce = sys::ForkSafeOnce::new();

/// Marks this re-executed process a shmproc child, before its target runs.
pub(crate) fn enter_spawned(ctx: &'static ChildCtx<'static>) {
    CTX.store(std::ptr::from_ref(ctx).cast_mut(), Ordering::Release);
}

fn ctx() -> Option<&'static ChildCtx<'static>> {
    let p = CTX.load(Ordering::Acquire);
    // SAFETY: a non-null CTX stays valid for the rest of the process (see `CTX`).
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Exits the forked child if something unwinds out of [`run_forked`]: the
/// frames above it belong to the parent's code, and its context would dangle.
struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        sys::exit_now(EXIT_PANIC);
    }
}

/// The whole life of a forked child (Fork and ForkServer): with
/// `daemon_parent`, arms the death signal and exits at once if that parent
/// is already gone; runs `close_inherited` (fds of the parent's bookkeeping
/// that the child must not keep); takes the OS-visible name `comm`; then runs
/// `body` (which writes the report to the fd it is given) with panic capture,
/// and `_exit`s. Between `fork` and `body` it makes only raw system calls.
pub(crate) fn run_forked(
    ctx: &ChildCtx<'_>,
    daemon_parent: Option<u32>,
    comm: Option<&[u8; 16]>,
    close_inherited: impl FnOnce(),
    body: impl FnOnce(BorrowedFd<'_>) -> Result<(), String>,
) -> ! {
    let _exit_on_unwind = ExitOnUnwind;
    if let Some(parent) = daemon_parent {
        // If the parent died before prctl took effect, nobody will send the
        // death signal: exit now instead.
        if sys::set_death_signal_kill().is_err() || sys::parent_pid() != parent {
            sys::exit_now(EXIT_REFUSED);
        }
    }
    close_inherited();
    if let Some(comm) = comm {
        sys::set_thread_name_bytes(comm);
    }
    // This call never returns (it `_exit`s, also on unwinding), so `ctx`
    // stays borrowed, and valid, for the rest of the process.
    CTX.store(std::ptr::from_ref(ctx).cast_mut().cast::<ChildCtx<'static>>(), Ordering::Release);
    let code = run_captured(|| body(ctx.report));
    sys::exit_now(code)
}

/// Sends `report` once per child (the first caller wins).
fn report_once(ctx: &ChildCtx<'_>, report: &Report) {
    if ctx.reported.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Ok(b) = postcard::to_extend(report, vec![TAG_REPORT]) {
        emit(ctx.report, &b);
    }
}

/// Installs (once per process) a panic hook that, in a shmproc child, sends
/// the panic report at once (so it also arrives when panics abort) and prints
/// one line to fd 2 without taking the stderr lock; in any other process it
/// calls the hook that was installed before.
///
/// Called in the parent before the first fork, so that a forked child does
/// not have to replace the hook (a write to the parent's hook state, which
/// would also cost copy-on-write faults). If the program later installs its
/// own hook, a child's panic message still comes from the panic payload, but
/// without its location.
pub(crate) fn ensure_panic_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let Some(ctx) = ctx() else { return previous(info) };
            let message = payload_text(info.payload());
            let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let line = format!(
                "shmproc child {} ({}) panicked at {}: {}\n",
                sys::raw_pid(),
                current_name(),
                location.as_deref().unwrap_or("?"),
                message
            );
            // Straight to fd 2, without the stderr lock.
            let _ = sys::write_all(std::io::stderr().as_fd(), line.as_bytes());
            report_once(ctx, &Report::Panic { message, location });
        }));
    });
}

/// The text of a panic payload (`&str` or `String`; anything else is named).
pub(crate) fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Runs `body` in a child (after [`enter_spawned`] or in [`run_forked`]) with panic capture; on
/// failure sends a [`TAG_REPORT`] report unless the panic hook already did.
/// Returns the exit code to use.
pub(crate) fn run_captured(body: impl FnOnce() -> Result<(), String>) -> i32 {
    let Some(ctx) = ctx() else { return EXIT_REFUSED };
    let outcome = panic::catch_unwind(AssertUnwindSafe(body));
    if outcome.is_ok() {
        // The body returned: a clean leave from every barrier it waited at
        // (this process `_exit`s and drops none of its handles). A panic
        // leaves them owing, so the barriers break.
        crate::sync::barrier::leave_all();
    }
    let report = match outcome {
        Ok(Ok(())) => return EXIT_OK,
        Ok(Err(reason)) => Report::Serde(reason),
        Err(payload) => Report::Panic { message: payload_text(&*payload), location: None },
    };
    report_once(ctx, &report);
    EXIT_PANIC
}

/// This process's shmproc name: the name it was started with, or `MainProcess`.
pub(crate) fn current_name() -> String {
    match ctx() {
        Some(c) => c.name.to_owned(),
        None => "MainProcess".to_owned(),
    }
}
