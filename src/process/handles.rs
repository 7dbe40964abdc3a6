//! Handing shmproc objects to another executable through its environment.
//!
//! The launcher calls [`CommandExt::share`] on a `std::process::Command`; the
//! launched program calls [`inherited`] with the same name (example on
//! [`CommandExt`]).
//!
//! `share("jobs", &obj)` sets `SHMPROC_HANDLE_JOBS=<handle>` (`name:/x` for a
//! named object, `fd:N` for an anonymous one). For an fd handle it duplicates
//! the object's fd (close-on-exec), keeps the duplicate alive as long as the
//! `Command`, and clears `FD_CLOEXEC` on it in the child only, between fork and
//! exec, so no other program the launcher runs inherits it. [`inherited`]
//! sets `FD_CLOEXEC` on that fd again once it has opened the object (which
//! keeps its own duplicate), so programs the launched one runs do not inherit
//! it either. It opens the handle with the type's own validation, so a wrong kind or element
//! type is [`OpenError::KindMismatch`](crate::OpenError::KindMismatch) /
//! [`TypeMismatch`](crate::OpenError::TypeMismatch) inside
//! [`InheritError::Open`].

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use super::error::{InheritError, ShareError};
use crate::segment::{Handle, ShmObject};
use crate::sys;

/// Prefix of the environment variables that carry handles.
pub const HANDLE_ENV_PREFIX: &str = "SHMPROC_HANDLE_";

fn env_var(name: &str) -> Option<String> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| format!("{HANDLE_ENV_PREFIX}{}", name.to_ascii_uppercase()))
}

/// Adds shmproc objects to a [`std::process::Command`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::process::CommandExt;
/// use shmproc::Value;
///
/// // Launcher:
/// let counter = Value::<u64>::anonymous(0)?;
/// let status = std::process::Command::new("worker").share("counter", &counter)?.status()?;
///
/// // In `worker`:
/// let counter: Value<u64> = shmproc::process::inherited("counter")?;
/// # Ok(()) }
/// ```
pub trait CommandExt {
    /// Hands `obj` to the launched program under `name` (1-64 ASCII letters,
    /// digits or `_`; case-insensitive). The program gets it back with
    /// [`inherited`]. The object must stay alive until the child opened it
    /// (a named object) or until `spawn` returned (an anonymous one: the
    /// `Command` keeps a duplicate of its fd).
    fn share<T: ShmObject>(&mut self, name: &str, obj: &T) -> Result<&mut Self, ShareError>;
}

impl CommandExt for Command {
    fn share<T: ShmObject>(&mut self, name: &str, obj: &T) -> Result<&mut Self, ShareError> {
        let var = env_var(name).ok_or_else(|| ShareError::BadName { name: name.to_owned() })?;
        let handle = match obj.handle() {
            Handle::Name(n) => Handle::Name(n),
            Handle::Fd(_) => {
                let dup = sys::dup_cloexec(obj.segment().fd()).map_err(ShareError::Os)?;
                let raw = dup.as_raw_fd();
                // SAFETY: between fork and exec the hook makes one fcntl on an fd the
                // closure owns (the Command owns the closure), plus the pipe's
                // async-signal-safe forgetting of inherited ends.
                unsafe {
                    self.pre_exec(move || {
                        // The program about to run holds none of our pipe ends.
                        crate::pipe::forget_inherited_before_exec();
                        sys::clear_cloexec_raw(dup.as_fd().as_raw_fd())
                    });
                }
                Handle::Fd(raw)
            }
        };
        self.env(var, handle.to_string());
        Ok(self)
    }
}

/// Opens the object that the launcher shared under `name` with
/// [`CommandExt::share`].
pub fn inherited<T: ShmObject>(name: &str) -> Result<T, InheritError> {
    let var = env_var(name).ok_or_else(|| InheritError::Missing { var: format!("{HANDLE_ENV_PREFIX}{name}") })?;
    let value = std::env::var(&var).map_err(|_| InheritError::Missing { var: var.clone() })?;
    let handle: Handle =
        value.parse().map_err(|_| InheritError::BadHandle { var: var.clone(), value: value.clone() })?;
    let obj = T::open_handle(&handle)
        .map_err(|source| InheritError::Open { name: name.to_owned(), source: Box::new(source) })?;
    if let Handle::Fd(raw) = handle {
        // The object now holds its own close-on-exec duplicate. The launcher
        // cleared FD_CLOEXEC on the inherited fd for this program only: set it
        // again, so that programs this one runs do not inherit the object too.
        // (Left open, not closed: a second `inherited` of the same name works.)
        if let Ok(fd) = sys::borrow_raw_fd(raw) {
            let _ = sys::set_cloexec(fd, true);
        }
    }
    Ok(obj)
}
