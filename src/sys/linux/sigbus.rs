//! Surviving a named segment that is truncated under its mapping.
//!
//! Any process that may write a POSIX shared-memory name can `ftruncate` it
//! while we have it mapped; our next access to a page past the new end raises
//! `SIGBUS`, whose default action kills the process. Anonymous segments are
//! memfds sealed against shrinking; a name cannot be sealed. So, as Wayland
//! compositors do for the pools their clients may shrink (libwayland-server,
//! `wl_shm_buffer_begin_access`), a `SIGBUS` handler looks the faulting
//! address up among the mappings registered here ([`watch`]); if it lies in
//! one, the handler maps private anonymous (zero) pages over that whole
//! mapping, marks it lost ([`Watch::lost`]) and returns, and the faulting
//! instruction runs again on the zeros. Zeros are bytes a hostile peer could
//! have written, which every object validates; the objects' slow paths also
//! ask [`Watch::lost`] and fail with their corrupt error.
//!
//! A `SIGBUS` anywhere else (or one sent with `kill`) goes to the handler
//! that was installed before ours: Rust's own stack-overflow handler, a
//! program's, or the default action (the process dies, as without us).
//!
//! The handler is installed once, by the first [`watch`], with `SA_ONSTACK`
//! (it runs on a thread's alternate stack where there is one) and
//! `SA_SIGINFO`. A program that installs its own `SIGBUS` handler afterwards
//! replaces ours: named segments then fault as they would without shmproc.
//!
//! The registry is lock-free and async-signal-safe to read: chunks of entries,
//! linked, never freed; each entry is a sequence lock (odd while it
//! changes), so the handler never pairs one mapping's start with another's
//! length. `sigaction` has no rustix wrapper, so it goes through libc; the
//! remap is rustix's raw `mmap` system call (no `errno`, nothing that locks).

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::fork::ForkSafeOnce;

/// Entries per chunk of the registry.
const CHUNK: usize = 64;

/// One watched mapping, or a free entry (`start` 0).
struct Entry {
    /// Even: stable; odd: being claimed or released.
    seq: AtomicU64,
    start: AtomicUsize,
    len: AtomicUsize,
    /// Set by the handler once the mapping has been replaced by zeros.
    lost: AtomicBool,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            seq: AtomicU64::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            lost: AtomicBool::new(false),
        }
    }
}

struct Chunk {
    entries: [Entry; CHUNK],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk { entries: [const { Entry::new() }; CHUNK], next: AtomicPtr::new(std::ptr::null_mut()) }
    }
}

/// Set (with the mapping's own flag) the first time the handler replaces a
/// mapping: until then every [`Watch::lost`] / [`any_lost`] answer is one load
/// of this never-written line, on the operations' paths.
static ANY_LOST: AtomicBool = AtomicBool::new(false);

/// Whether the handler has replaced any mapping in this process (or in the
/// process it was forked from). `false` means no segment is lost.
#[inline]
pub(crate) fn any_lost() -> bool {
    // As in `Watch::lost`: not read before an access that faulted.
    compiler_fence(Ordering::SeqCst);
    ANY_LOST.load(Ordering::Acquire)
}

/// The registry's first chunk; later ones are leaked boxes linked from it.
static FIRST: Chunk = Chunk::new();

/// The handler's installation: once per process, and never wedged by a
/// `fork` during another thread's installation ([`ForkSafeOnce`]).
static INSTALL: ForkSafeOnce = ForkSafeOnce::new();
/// Whether it succeeded.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The `SIGBUS` action found before ours was installed: written once, then
/// `ready` raised (release), all before our handler is installed.
struct Previous {
    ready: AtomicBool,
    action: UnsafeCell<MaybeUninit<libc::sigaction>>,
}

// SAFETY: `action` is written once, by the one thread running `INSTALL`'s
// closure, before `ready` is raised with release ordering; it is read only
// after `ready` is seen raised with acquire ordering, and never written again
// (a forked child that repeats the installation finds our handler in place
// and leaves `action` alone).
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous { ready: AtomicBool::new(false), action: UnsafeCell::new(MaybeUninit::uninit()) };

impl Previous {
    /// The previous action, once recorded (async-signal-safe).
    fn get(&self) -> Option<&libc::sigaction> {
        // SAFETY: see the `Sync` impl: written once before `ready` was raised.
        self.ready.load(Ordering::Acquire).then(|| unsafe { (*self.action.get()).assume_init_ref() })
    }
}

/// A registered mapping: the handler replaces it with zeros instead of
/// letting a fault in it kill the process. Unregistered on drop, which must
/// come before the range is unmapped.
pub(crate) struct Watch {
    entry: &'static Entry,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("lost", &self.lost()).finish()
    }
}

impl Watch {
    /// Whether a fault replaced the mapping with private zero pages: the
    /// object behind it is gone for this process (its file was truncated).
    #[inline]
    pub(crate) fn lost(&self) -> bool {
        // The handler ran on this thread inside an ordinary access the
        // compiler knows nothing of: keep this load after every access
        // written before it.
        compiler_fence(Ordering::SeqCst);
        self.entry.lost.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let e = self.entry;
        e.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        e.start.store(0, Ordering::Relaxed);
        e.len.store(0, Ordering::Relaxed);
        e.lost.store(false, Ordering::Relaxed);
        e.seq.fetch_add(1, Ordering::Release);
    }
}

/// The chunks of the registry, in order.
fn chunks() -> impl Iterator<Item = &'static Chunk> {
    let mut next: Option<&'static Chunk> = Some(&FIRST);
    std::iter::from_fn(move || {
        let c = next?;
        let p = c.next.load(Ordering::Acquire);
        // SAFETY: `next` only ever holds null or a leaked (never freed) `Chunk`.
        next = unsafe { p.as_ref() };
        Some(c)
    })
}

/// Registers `len` bytes at `start` (a live mapping of the caller's) with
/// the `SIGBUS` handler, installing it on first use. `None`: the handler
/// could not be installed; the mapping is then unprotected, as before.
pub(crate) fn watch(start: *mut u8, len: usize) -> Option<Watch> {
    if !installed() || len == 0 {
        return None;
    }
    loop {
        let mut last = &FIRST;
        for c in chunks() {
            for e in &c.entries {
                // Free: even and empty as of `s` (acquire: the `start` a
                // writer stored before its release of `s` is what we read).
                // The CAS succeeds only if no writer has moved `seq` since,
                // so the entry is still free, and now ours (odd).
                let s = e.seq.load(Ordering::Acquire);
                if s & 1 == 0
                    && e.start.load(Ordering::Relaxed) == 0
                    && e.seq.compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
                {
                    // The odd `seq` is visible before anything written next.
                    fence(Ordering::Release);
                    e.len.store(len, Ordering::Relaxed);
                    e.lost.store(false, Ordering::Relaxed);
                    e.start.store(start as usize, Ordering::Relaxed);
                    e.seq.store(s + 2, Ordering::Release);
                    return Some(Watch { entry: e });
                }
            }
            last = c;
        }
        // Every entry is taken: link a new chunk after the last one (or,
        // if another thread linked one first, search again from there).
        let new = Box::into_raw(Box::new(Chunk::new()));
        if last.next.compare_exchange(std::ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // SAFETY: `new` was never published; we still own it.
            drop(unsafe { Box::from_raw(new) });
        }
    }
}

/// Installs the handler once; whether it is in place.
fn installed() -> bool {
    INSTALL.call_once(|| INSTALLED.store(install(), Ordering::Release));
    INSTALLED.load(Ordering::Acquire)
}

/// Records the current `SIGBUS` action, then installs ours (run by one
/// thread per process, see `INSTALL`).
fn install() -> bool {
    let ours = on_sigbus as *const () as usize;
    // `PREVIOUS.action` is written only here, by the one thread running
    // `INSTALL`'s closure, before `ready` is raised and before our handler
    // (its only other reader) is installed.
    // SAFETY: plain `sigaction` calls on zeroed structs; `on_sigbus` has the
    // `SA_SIGINFO` signature; `PREVIOUS.action` as said above.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
            return false;
        }
        if old.sa_sigaction == ours {
            // Installed by the process we were forked from, whose thread
            // had not finished: `PREVIOUS` was recorded before that.
            return true;
        }
        (*PREVIOUS.action.get()).write(old);
        PREVIOUS.ready.store(true, Ordering::Release);
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = ours;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0
    }
}

/// The watched mapping holding `addr`, if any (async-signal-safe).
fn find(addr: usize) -> Option<(&'static Entry, usize, usize)> {
    for c in chunks() {
        for e in &c.entries {
            let s = e.seq.load(Ordering::Acquire);
            if s & 1 != 0 {
                continue;
            }
            let (start, len) = (e.start.load(Ordering::Relaxed), e.len.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) != s || start == 0 {
                continue;
            }
            if addr >= start && addr - start < len {
                return Some((e, start, len));
            }
        }
    }
    None
}

/// The `SIGBUS` handler (see the module docs).
extern "C" fn on_sigbus(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t`; for a
    // fault (`si_code > 0`) its address field is the faulting address.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code > 0 {
        if let Some((e, start, len)) = find(addr) {
            // Before the zeros appear: a thread that sees them and then
            // checks `lost` sees it set.
            e.lost.store(true, Ordering::SeqCst);
            ANY_LOST.store(true, Ordering::SeqCst);
            // The entry is registered until its `Segment` unmaps it, and the
            // faulting thread is using it; pages of the same size keep every
            // pointer into it valid.
            // SAFETY: `start..start + len` is a live mapping of this process,
            // replaced by private zero pages (see above).
            let r = unsafe {
                rustix::mm::mmap_anonymous(
                    start as *mut c_void,
                    len,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
                )
            };
            if r.is_ok() {
                return;
            }
        }
    }
    chain(sig, info, ctx, code);
}

/// Hands a `SIGBUS` that is not ours to the action that was there before
/// (its `sa_mask` and `SA_RESETHAND` are not applied).
fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void, code: c_int) {
    let h = PREVIOUS.get().map_or(libc::SIG_DFL, |old| old.sa_sigaction);
    if h == libc::SIG_IGN && code <= 0 {
        // A sent SIGBUS the program ignores.
        return;
    }
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SIGBUS is blocked while this handler runs: the raised one is
        // delivered, under the default action, as it returns, and kills the
        // process (the kernel does the same for a fault whose signal is
        // ignored). Raised even for a fault, which would repeat, since an
        // asynchronous one (BUS_MCEERR_AO) would not.
        // SAFETY: `signal` and `raise` are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            libc::raise(libc::SIGBUS);
        }
        return;
    }
    let Some(old) = PREVIOUS.get() else { return };
    if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was installed with SA_SIGINFO, so
        // `sa_sigaction` is a handler of this signature.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO, `sa_sigaction` is an `sa_handler`.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_reused_and_chunks_grow() {
        let mut bufs: Vec<Vec<u8>> = (0..CHUNK * 2 + 5).map(|_| vec![0u8; 64]).collect();
        let watches: Vec<Watch> = bufs.iter_mut().map(|b| watch(b.as_mut_ptr(), b.len()).expect("installed")).collect();
        for (b, w) in bufs.iter().zip(&watches) {
            let (e, start, len) = find(b.as_ptr() as usize + 63).expect("registered");
            assert!(std::ptr::eq(e, w.entry));
            assert_eq!((start, len), (b.as_ptr() as usize, 64));
            assert!(!w.lost());
        }
        let first = bufs[0].as_ptr() as usize;
        assert!(find(first + 64).is_none_or(|(e, _, _)| !std::ptr::eq(e, watches[0].entry)));
        drop(watches);
        assert!(bufs.iter().all(|b| find(b.as_ptr() as usize).is_none()), "released on drop");
        let again = watch(bufs[3].as_mut_ptr(), 8).expect("installed");
        assert!(find(bufs[3].as_ptr() as usize + 7).is_some_and(|(e, _, _)| std::ptr::eq(e, again.entry)));
    }
}
