//! Report sockets: one `SOCK_SEQPACKET` pair per running child, reused from a
//! small per-process pool.
//!
//! Creating and closing a socket pair per child costs more than the rest of a
//! fork-based start on the machines we measured (the kernel frees sockets
//! through deferred work), so a joined child's pair goes back to the pool. A
//! pair is only reused after its child was reaped and its report taken; a
//! descendant of that child may still hold the child's end, so every datagram
//! starts with a per-start random token and the parent discards datagrams
//! with another token; a pair with anything left queued after its report,
//! or whose report did not decode, is closed rather than reused.
//!
//! The pool is only ever locked with `try_lock`: a busy (or, in a forked
//! child, inherited-locked) pool just means a fresh pair. A forked child
//! never reuses its parent's idle pairs (they are the parent's sockets): the
//! pool records the pid that filled it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sys;

/// Most idle pairs kept per process.
const MAX_IDLE: usize = 16;

/// A report socket pair and the token of the child that will use it.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The parent's end.
    pub(crate) rd: OwnedFd,
    /// The child's end (kept by the parent too, so the pair can be reused).
    pub(crate) wr: OwnedFd,
    /// The token the child's report starts with.
    pub(crate) token: u64,
}

struct Pool {
    owner: u32,
    idle: Vec<(OwnedFd, OwnedFd)>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { owner: 0, idle: Vec::new() });
static TOKEN: AtomicU64 = AtomicU64::new(1);

/// A token for a new child: random, so that a process holding a pair's
/// child end (a descendant of an earlier child) cannot guess the token of
/// the next child to use the pair and forge its report. (A counter if the
/// random source fails.)
fn new_token() -> u64 {
    getrandom::u64().unwrap_or_else(|_| TOKEN.fetch_add(1, Ordering::Relaxed)).max(1)
}

/// A pair for a new child: an idle one of this process, or a fresh one.
pub(crate) fn take() -> io::Result<Channel> {
    let token = new_token();
    let me = sys::current_pid();
    if let Ok(mut pool) = POOL.try_lock() {
        if pool.owner != me {
            // Inherited through fork: these are the parent's sockets.
            pool.idle.clear();
            pool.owner = me;
        }
        if let Some((rd, wr)) = pool.idle.pop() {
            return Ok(Channel { rd, wr, token });
        }
    }
    let (rd, wr) = sys::seqpacket_pair()?;
    Ok(Channel { rd, wr, token })
}

/// In a forked child, before its target runs: closes the idle pairs it
/// inherited from its parent's pool (the parent's sockets, for the parent's
/// later children), so that neither the target nor anything it starts can
/// write into them. Raw `close`s only, and the pool forgets the numbers
/// without freeing anything (the lock may be held by a thread that did not
/// come along: then the pairs stay).
pub(crate) fn close_idle_in_child() {
    if let Ok(mut pool) = POOL.try_lock() {
        for (rd, wr) in &pool.idle {
            // SAFETY: these fds are the parent's pool entries, which this
            // child never uses: the pool forgets them just below.
            unsafe {
                sys::close_raw(std::os::fd::AsRawFd::as_raw_fd(rd));
                sys::close_raw(std::os::fd::AsRawFd::as_raw_fd(wr));
            }
        }
        // `take` leaves an empty Vec without allocating; `forget` frees
        // nothing (no allocator call in a child of a threaded parent) and
        // drops no fd a second time.
        std::mem::forget(std::mem::take(&mut pool.idle));
    }
}

/// Returns a pair whose child was reaped and whose report was taken.
pub(crate) fn give_back(rd: OwnedFd, wr: OwnedFd) {
    let me = sys::current_pid();
    if let Ok(mut pool) = POOL.try_lock() {
        if pool.owner == me && pool.idle.len() < MAX_IDLE {
            pool.idle.push((rd, wr));
        }
    }
}
