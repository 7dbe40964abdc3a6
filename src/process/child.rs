//! What runs inside a child: the typed trampoline, the report sent back to the
//! parent, the panic capture, and the `fn`-by-offset encoding.
//!
//! ## Report (child to parent, over the result pipe)
//! One postcard-encoded [`Report`], written once, after the target returned or
//! panicked, then the child exits. The parent reads it to end of file or until
//! the child is reaped; a missing or truncated report means the child died.
//!
//! ## Sending a `fn` to a re-executed copy
//! A `fn(A) -> R` cannot be serialised, but the same executable loaded again
//! holds the same code at the same offset from any of its own symbols (ASLR
//! slides the whole image). The parent sends `target - anchor` and
//! `trampoline - anchor`, where `anchor` is [`anchor`] and `trampoline` is the
//! monomorphised [`trampoline::<A, R>`] that decodes `A`, calls the target and
//! encodes `R`. The child only turns the offsets back into pointers after it
//! checked that it runs the very same executable file as the parent (see
//! `spawn.rs`) and that both addresses lie in the image of its executable.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sys;

/// The message a child sends back.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The target returned; postcard bytes of its `R`.
    Ok(Vec<u8>),
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

/// Runs one typed target: decodes the argument, calls `func`, encodes the result.
pub(crate) type Trampoline = fn(usize, &[u8]) -> Report;

/// The monomorphised trampoline for a `fn(A) -> R` whose address is `func`.
pub(crate) fn trampoline<A: DeserializeOwned, R: Serialize>(func: usize, args: &[u8]) -> Report {
    // SAFETY: `func` was produced from a `fn(A) -> R` by `Process::builder` (in this
    // process, or in the parent running the same executable, rebased by the
    // verified offset from `anchor`), and this trampoline was instantiated for
    // the same `A` and `R`. Function pointers and `usize` have the same size.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let arg: A = match postcard::from_bytes(args) {
        Ok(a) => a,
        Err(e) => return Report::Serde(format!("decoding the argument in the child: {e}")),
    };
    let r = f(arg);
    match postcard::to_allocvec(&r) {
        Ok(bytes) => Report::Ok(bytes),
        Err(e) => Report::Serde(format!("encoding the result in the child: {e}")),
    }
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
/// as the anchor (checked with `dladdr`; accepted when the loader cannot tell).
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

static PANIC: Mutex<Option<(String, Option<String>)>> = Mutex::new(None);

/// Installs, in a child, a panic hook that records the message for the report
/// and prints one line to fd 2 without taking the stderr lock.
fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let line = format!(
            "shmproc child {} ({}) panicked at {}: {}\n",
            sys::raw_pid(),
            current_name(),
            location.as_deref().unwrap_or("?"),
            message
        );
        // SAFETY: fd 2 is borrowed only for this write; it is not closed here.
        let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
        let _ = sys::write_all(stderr, line.as_bytes());
        if let Ok(mut slot) = PANIC.lock() {
            *slot = Some((message, location));
        }
    }));
}

/// Runs `body` in a child: panic capture, then the encoded report and the exit
/// code to use.
pub(crate) fn run_captured(body: impl FnOnce() -> Report) -> (Vec<u8>, i32) {
    install_panic_hook();
    let report = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(_) => {
            let (message, location) =
                PANIC.lock().ok().and_then(|mut s| s.take()).unwrap_or_else(|| ("unknown panic".to_owned(), None));
            Report::Panic { message, location }
        }
    };
    let code = match report {
        Report::Ok(_) => EXIT_OK,
        _ => EXIT_PANIC,
    };
    let bytes = postcard::to_allocvec(&report).unwrap_or_default();
    (bytes, code)
}

static NAME: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());

/// Records this process's shmproc name (in a child, once, before the target runs).
pub(crate) fn set_current_name(name: String) {
    let old = NAME.swap(Box::into_raw(Box::new(name)), Ordering::AcqRel);
    // The old name (inherited from a parent that was itself a child) is leaked
    // on purpose: another thread of the parent could not be reading it here,
    // but freeing memory we did not allocate after fork gains nothing.
    let _ = old;
}

/// This process's shmproc name: the name it was started with, or `MainProcess`.
pub(crate) fn current_name() -> String {
    let p = NAME.load(Ordering::Acquire);
    if p.is_null() {
        "MainProcess".to_owned()
    } else {
        // SAFETY: a non-null NAME points to a leaked Box<String> that is never freed.
        unsafe { (*p).clone() }
    }
}
