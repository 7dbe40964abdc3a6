//! Capturing closures as pool tasks, where workers are forked
//! ([`StartMethod::Fork`](crate::process::StartMethod::Fork)).
//!
//! ## Design
//! A forked worker has a copy of its parent's memory as it was at the fork:
//! a closure that existed then is in the worker too, at the same address. So
//! a closure is made a task in two steps, like Python's "define the function
//! before you create the pool":
//!
//! 1. [`Closure::new`] puts the closure in a process-wide, append-only table
//!    (it lives as long as the process: workers forked later, replacements
//!    included, need it);
//! 2. a pool created *after* it forks workers that hold it;
//!    [`Pool::map_closure`](super::Pool::map_closure) and
//!    [`Pool::apply_closure`](super::Pool::apply_closure) send its index in the
//!    table instead of a function's address.
//!
//! The worker finds the closure by index and checks its type (`Any`
//! downcast) before calling it: a wrong index is an item error, never a bad
//! call. A pool refuses a closure made after the pool (its workers do not
//! have it) and any closure when its workers are not forked (Spawn,
//! ForkServer): each item then fails with [`TaskError::Serialize`](super::TaskError::Serialize)
//! naming the reason, before anything is sent.
//!
//! The table is lock-free (a counter and write-once cells) so that a fork
//! while another thread adds a closure cannot leave the worker a held lock:
//! a cell being filled during the fork is simply empty in that worker.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{self, WireError};
use super::worker::RunCx;

/// How many closures a process can make tasks of.
pub const MAX_CLOSURES: usize = 1024;

type Erased = Box<dyn Any + Send + Sync>;

static TABLE: [OnceLock<Erased>; MAX_CLOSURES] = [const { OnceLock::new() }; MAX_CLOSURES];
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A capturing closure `Fn(A) -> R`, registered so that workers forked from
/// now on can run it (see [Tasks](crate::pool#tasks)).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::pool::Closure;
/// use shmproc::process::StartMethod;
/// use shmproc::Pool;
/// let k = 10u64;
/// let add_k = Closure::new(move |x: u64| x + k); // first the closure...
/// let pool = Pool::builder().processes(2).start_method(StartMethod::Fork).create()?; // ...then the pool
/// assert_eq!(pool.map_closure(&add_k, [1, 2, 3])?, vec![11, 12, 13]);
/// # Ok(()) }
/// ```
pub struct Closure<A, R> {
    /// Index in the table; `None` when the table was full.
    index: Option<usize>,
    _t: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for Closure<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for Closure<A, R> {}

impl<A, R> std::fmt::Debug for Closure<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closure").field("index", &self.index).finish()
    }
}

/// What a table entry holds: the closure behind a type the worker can check.
struct Entry<A, R>(Box<dyn Fn(A) -> R + Send + Sync>);

impl<A: 'static, R: 'static> Closure<A, R> {
    /// Registers `f` for the pools created from now on. It stays in memory
    /// until the process exits. At most [`MAX_CLOSURES`] per process; past
    /// that, tasks of the returned closure fail with a `Serialize` error.
    pub fn new<F: Fn(A) -> R + Send + Sync + 'static>(f: F) -> Closure<A, R> {
        let i = NEXT.fetch_add(1, Ordering::AcqRel);
        let index = TABLE.get(i).map(|cell| {
            let _ = cell.set(Box::new(Entry::<A, R>(Box::new(f))));
            i
        });
        if index.is_none() {
            NEXT.store(MAX_CLOSURES, Ordering::Relaxed);
        }
        Closure { index, _t: PhantomData }
    }

    /// Index in the table, if it got one.
    pub(crate) fn index(&self) -> Option<usize> {
        self.index
    }
}

/// How many closures exist now (a pool's workers have every closure below
/// the count read before they were forked).
pub(crate) fn registered() -> usize {
    NEXT.load(Ordering::Acquire).min(MAX_CLOSURES)
}

/// The item runner for a [`Closure`]: `index` is its table index (sent in the
/// function field of the task frame, tagged; see `wire::CLOSURE_TAG`).
pub(crate) fn run_closure<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    index: usize,
    cx: &mut RunCx<'_, '_, '_>,
) {
    let entry = TABLE.get(index).and_then(OnceLock::get).and_then(|e| e.downcast_ref::<Entry<A, R>>());
    let Some(Entry(f)) = entry else {
        while cx.next_arg().is_some() {
            cx.err(&WireError::Deserialize(format!("closure {index} is not in this worker (made after its fork?)")));
        }
        return;
    };
    while let Some(arg) = cx.next_arg() {
        match wire::decode_item::<A>(arg) {
            Ok(a) => wire::call_captured(cx, || f(a)),
            Err(e) => wire::bad_arg(cx, e),
        }
    }
}
