//! Typed proxies. Each is `Clone + Send + Sync + Debug` and serde
//! (serializing as manager location + object id + type fingerprint, never a
//! key: see the module docs), so it can be a [`Process`](crate::Process)
//! argument. Calls from one thread share that thread's connection.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{self, ManagerRef};
use super::proto::{Kind, Micros, Op, Request, Response};
use super::{fingerprint, Manager, ManagerError};

fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, ManagerError> {
    postcard::to_stdvec(v).map_err(ManagerError::Serialize)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, ManagerError> {
    crate::decode::from_bytes(b).map_err(ManagerError::Deserialize)
}

fn micros(t: Option<Duration>) -> Micros {
    t.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

const BAD: ManagerError = ManagerError::Protocol("unexpected response");

/// Checks that the manager answers (a call on an object that cannot exist).
pub(crate) fn ping(m: &ManagerRef) -> Result<(), ManagerError> {
    match client::call(m, &Request::Call { id: 0, fp: 0, op: Op::Len })? {
        Response::Fault(_) => Ok(()),
        _ => Err(BAD),
    }
}

/// What every proxy holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remote {
    mgr: ManagerRef,
    id: u64,
    fp: u64,
}

impl Remote {
    fn call(&self, op: Op) -> Result<Response, ManagerError> {
        match client::call(&self.mgr, &Request::Call { id: self.id, fp: self.fp, op })? {
            Response::Fault(f) => Err(f.into()),
            r => Ok(r),
        }
    }
    fn unit(&self, op: Op) -> Result<(), ManagerError> {
        match self.call(op)? {
            Response::Unit => Ok(()),
            _ => Err(BAD),
        }
    }
    fn boolean(&self, op: Op) -> Result<bool, ManagerError> {
        match self.call(op)? {
            Response::Bool(b) => Ok(b),
            _ => Err(BAD),
        }
    }
    fn num(&self, op: Op) -> Result<u64, ManagerError> {
        match self.call(op)? {
            Response::Num(n) => Ok(n),
            _ => Err(BAD),
        }
    }
    fn bytes(&self, op: Op) -> Result<Vec<u8>, ManagerError> {
        match self.call(op)? {
            Response::Bytes(b) => Ok(b),
            _ => Err(BAD),
        }
    }
    fn maybe<T: DeserializeOwned>(&self, op: Op) -> Result<Option<T>, ManagerError> {
        match self.call(op)? {
            Response::Maybe(b) => b.map(|b| dec(&b)).transpose(),
            _ => Err(BAD),
        }
    }
    fn items<T: DeserializeOwned>(&self, op: Op) -> Result<Vec<T>, ManagerError> {
        match self.call(op)? {
            Response::Items(v) => v.iter().map(|b| dec(b)).collect(),
            _ => Err(BAD),
        }
    }
}

macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident <$($t:ident),*> = $fp:expr) => {
        $(#[$doc])*
        ///
        /// Serializes as the manager's location, the object id and the type
        /// fingerprint; deserializing it as a proxy of another type fails.
        #[derive(Serialize, Deserialize)]
        #[serde(bound = "", try_from = "Remote", into = "Remote")]
        pub struct $name<$($t),*> {
            r: Remote,
            _t: PhantomData<fn() -> ($($t,)*)>,
        }
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { r: self.r.clone(), _t: PhantomData }
            }
        }
        impl<$($t),*> fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("id", &self.r.id).field("manager", &self.r.mgr).finish()
            }
        }
        impl<$($t),*> PartialEq for $name<$($t),*> {
            /// Same managed object.
            fn eq(&self, other: &Self) -> bool {
                self.r == other.r
            }
        }
        impl<$($t),*> From<$name<$($t),*>> for Remote {
            fn from(p: $name<$($t),*>) -> Remote {
                p.r
            }
        }
        impl<$($t),*> TryFrom<Remote> for $name<$($t),*> {
            type Error = String;
            fn try_from(r: Remote) -> Result<Self, String> {
                if r.fp != $fp {
                    return Err(format!("this proxy is not a {}", std::any::type_name::<Self>()));
                }
                Ok($name { r, _t: PhantomData })
            }
        }
        impl<$($t),*> $name<$($t),*> {
            fn wrap(mgr: ManagerRef, id: u64, fp: u64) -> Self {
                $name { r: Remote { mgr, id, fp }, _t: PhantomData }
            }
        }
    };
}

proxy!(
    /// A managed `dict`: a map from `K` to `V` (Python's `DictProxy`).
    /// Keys are compared by their postcard encoding; `keys` and `snapshot`
    /// list them in the order of those encodings.
    DictProxy<K, V> = fingerprint::<(K, V)>()
);
proxy!(
    /// A managed `list` of `T` (Python's `ListProxy`).
    ListProxy<T> = fingerprint::<T>()
);
proxy!(
    /// A managed namespace: named fields of any serde type (Python's
    /// `Namespace`); each field remembers its type.
    NamespaceProxy<> = fingerprint::<NamespaceProxy>()
);
proxy!(
    /// A managed value of any serde type `T`, including your own types with
    /// registered functions (Python's `Value` and `register`ed classes).
    ValueProxy<T> = fingerprint::<T>()
);
proxy!(
    /// A managed FIFO queue of `T` (Python's `Manager().Queue()`).
    QueueProxy<T> = fingerprint::<T>()
);
proxy!(
    /// A managed lock, owned by the connection (thread) that acquired it;
    /// released by the server if that connection ends.
    LockProxy<> = fingerprint::<LockProxy>()
);
proxy!(
    /// A managed reentrant lock (owned as [`LockProxy`]).
    RLockProxy<> = fingerprint::<RLockProxy>()
);
proxy!(
    /// A managed counting semaphore.
    SemaphoreProxy<> = fingerprint::<SemaphoreProxy>()
);
proxy!(
    /// A managed event flag.
    EventProxy<> = fingerprint::<EventProxy>()
);
proxy!(
    /// A managed condition variable with its own reentrant lock.
    ConditionProxy<> = fingerprint::<ConditionProxy>()
);
proxy!(
    /// A managed barrier for `n` parties.
    BarrierProxy<> = fingerprint::<BarrierProxy>()
);

/// Creates objects under a name: the first call creates it, later calls
/// (from any process, local or remote) get the same object, if the kind
/// and type match ([`ManagerError::TypeMismatch`] otherwise). Made by
/// [`Manager::named`]; the way remote clients find shared objects (Python
/// registers a typeid with a shared callable for that).
#[derive(Debug)]
pub struct Named<'a> {
    m: &'a Manager,
    name: Option<String>,
}

impl Manager {
    /// Objects created through the result are named `name` (see [`Named`]).
    pub fn named(&self, name: &str) -> Named<'_> {
        Named { m: self, name: Some(name.to_string()) }
    }
    fn anon(&self) -> Named<'_> {
        Named { m: self, name: None }
    }
    /// A new empty managed dict.
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<DictProxy<K, V>, ManagerError> {
        self.anon().dict()
    }
    /// A new empty managed list.
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>, ManagerError> {
        self.anon().list()
    }
    /// A new empty namespace.
    pub fn namespace(&self) -> Result<NamespaceProxy, ManagerError> {
        self.anon().namespace()
    }
    /// A new managed value holding `init`.
    pub fn value<T: Serialize + DeserializeOwned>(&self, init: &T) -> Result<ValueProxy<T>, ManagerError> {
        self.anon().value(init)
    }
    /// A new managed queue holding at most `maxsize` items (0: unbounded).
    pub fn queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>, ManagerError> {
        self.anon().queue(maxsize)
    }
    /// A new managed lock.
    pub fn lock(&self) -> Result<LockProxy, ManagerError> {
        self.anon().lock()
    }
    /// A new managed reentrant lock.
    pub fn rlock(&self) -> Result<RLockProxy, ManagerError> {
        self.anon().rlock()
    }
    /// A new managed semaphore with value `n`.
    pub fn semaphore(&self, n: u64) -> Result<SemaphoreProxy, ManagerError> {
        self.anon().semaphore(n)
    }
    /// A new managed semaphore with value `n` that refuses to be released
    /// above `n` ([`ManagerError::TooManyReleases`]).
    pub fn bounded_semaphore(&self, n: u64) -> Result<SemaphoreProxy, ManagerError> {
        self.anon().bounded_semaphore(n)
    }
    /// A new managed event (clear).
    pub fn event(&self) -> Result<EventProxy, ManagerError> {
        self.anon().event()
    }
    /// A new managed condition.
    pub fn condition(&self) -> Result<ConditionProxy, ManagerError> {
        self.anon().condition()
    }
    /// A new managed barrier for `parties` (at least 1) processes or threads.
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, ManagerError> {
        self.anon().barrier(parties)
    }
}

impl Named<'_> {
    /// A new empty managed dict.
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<DictProxy<K, V>, ManagerError> {
        let fp = fingerprint::<(K, V)>();
        let (m, id) = self.m.create(self.name.as_deref(), Kind::Dict, fp, 0, Vec::new())?;
        Ok(DictProxy::wrap(m, id, fp))
    }

    /// A new empty managed list.
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>, ManagerError> {
        let fp = fingerprint::<T>();
        let (m, id) = self.m.create(self.name.as_deref(), Kind::List, fp, 0, Vec::new())?;
        Ok(ListProxy::wrap(m, id, fp))
    }

    /// A new empty namespace.
    pub fn namespace(&self) -> Result<NamespaceProxy, ManagerError> {
        let (m, id) =
            self.m.create(self.name.as_deref(), Kind::Namespace, fingerprint::<NamespaceProxy>(), 0, Vec::new())?;
        Ok(NamespaceProxy::wrap(m, id, fingerprint::<NamespaceProxy>()))
    }

    /// A new managed value holding `init`.
    pub fn value<T: Serialize + DeserializeOwned>(&self, init: &T) -> Result<ValueProxy<T>, ManagerError> {
        let fp = fingerprint::<T>();
        let (m, id) = self.m.create(self.name.as_deref(), Kind::Value, fp, 0, enc(init)?)?;
        Ok(ValueProxy::wrap(m, id, fp))
    }

    /// A new managed queue holding at most `maxsize` items (0: unbounded).
    pub fn queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>, ManagerError> {
        let fp = fingerprint::<T>();
        let (m, id) = self.m.create(self.name.as_deref(), Kind::Queue, fp, maxsize as u64, Vec::new())?;
        Ok(QueueProxy::wrap(m, id, fp))
    }

    /// A new managed lock.
    pub fn lock(&self) -> Result<LockProxy, ManagerError> {
        let (m, id) = self.m.create(self.name.as_deref(), Kind::Lock, fingerprint::<LockProxy>(), 0, Vec::new())?;
        Ok(LockProxy::wrap(m, id, fingerprint::<LockProxy>()))
    }

    /// A new managed reentrant lock.
    pub fn rlock(&self) -> Result<RLockProxy, ManagerError> {
        let (m, id) = self.m.create(self.name.as_deref(), Kind::RLock, fingerprint::<RLockProxy>(), 0, Vec::new())?;
        Ok(RLockProxy::wrap(m, id, fingerprint::<RLockProxy>()))
    }

    /// A new managed semaphore with value `n`.
    pub fn semaphore(&self, n: u64) -> Result<SemaphoreProxy, ManagerError> {
        let (m, id) =
            self.m.create(self.name.as_deref(), Kind::Semaphore, fingerprint::<SemaphoreProxy>(), n, Vec::new())?;
        Ok(SemaphoreProxy::wrap(m, id, fingerprint::<SemaphoreProxy>()))
    }

    /// A new managed semaphore with value `n` that refuses to be released above `n`.
    pub fn bounded_semaphore(&self, n: u64) -> Result<SemaphoreProxy, ManagerError> {
        let fp = fingerprint::<SemaphoreProxy>();
        let (m, id) = self.m.create(self.name.as_deref(), Kind::BoundedSemaphore, fp, n, Vec::new())?;
        Ok(SemaphoreProxy::wrap(m, id, fp))
    }

    /// A new managed event (clear).
    pub fn event(&self) -> Result<EventProxy, ManagerError> {
        let (m, id) = self.m.create(self.name.as_deref(), Kind::Event, fingerprint::<EventProxy>(), 0, Vec::new())?;
        Ok(EventProxy::wrap(m, id, fingerprint::<EventProxy>()))
    }

    /// A new managed condition.
    pub fn condition(&self) -> Result<ConditionProxy, ManagerError> {
        let (m, id) =
            self.m.create(self.name.as_deref(), Kind::Condition, fingerprint::<ConditionProxy>(), 0, Vec::new())?;
        Ok(ConditionProxy::wrap(m, id, fingerprint::<ConditionProxy>()))
    }

    /// A new managed barrier for `parties` (at least 1) processes or threads.
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, ManagerError> {
        let (m, id) = self.m.create(
            self.name.as_deref(),
            Kind::Barrier,
            fingerprint::<BarrierProxy>(),
            parties as u64,
            Vec::new(),
        )?;
        Ok(BarrierProxy::wrap(m, id, fingerprint::<BarrierProxy>()))
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// Inserts, returning the previous value.
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>, ManagerError> {
        self.r.maybe(Op::Insert(enc(key)?, enc(value)?))
    }
    /// The value at `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>, ManagerError> {
        self.r.maybe(Op::Get(enc(key)?))
    }
    /// Removes and returns the value at `key`.
    pub fn remove(&self, key: &K) -> Result<Option<V>, ManagerError> {
        self.r.maybe(Op::Remove(enc(key)?))
    }
    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> Result<bool, ManagerError> {
        self.r.boolean(Op::Contains(enc(key)?))
    }
    /// Number of entries.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.r.num(Op::Len).map(|n| n as usize)
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        self.len().map(|n| n == 0)
    }
    /// The keys, in one atomic step.
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        self.r.items(Op::Keys)
    }
    /// All entries, in one atomic step (Python's `items()` / `copy()`).
    pub fn snapshot(&self) -> Result<Vec<(K, V)>, ManagerError> {
        match self.r.call(Op::Snapshot)? {
            Response::Pairs(p) => p.iter().map(|(k, v)| Ok((dec(k)?, dec(v)?))).collect(),
            _ => Err(BAD),
        }
    }
    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::Clear)
    }
    /// Inserts every pair, in one atomic step (Python's `update(iterable)`).
    pub fn extend<'a, I>(&self, pairs: I) -> Result<(), ManagerError>
    where
        I: IntoIterator<Item = (&'a K, &'a V)>,
        K: 'a,
        V: 'a,
    {
        let p = pairs.into_iter().map(|(k, v)| Ok((enc(k)?, enc(v)?))).collect::<Result<Vec<_>, ManagerError>>()?;
        self.r.unit(Op::ExtendPairs(p))
    }
    /// Runs the function registered as `func` (a `fn(&mut V, A) -> R`, see
    /// [`ManagerBuilder::register`](super::ManagerBuilder::register)) on the
    /// entry at `key` (`V::default()` if missing) on the server, atomically,
    /// stores the result back and returns what the function returned.
    pub fn update<A, R>(&self, key: &K, func: &str, arg: &A) -> Result<R, ManagerError>
    where
        V: 'static,
        A: Serialize + 'static,
        R: DeserializeOwned + 'static,
    {
        let fp = fingerprint::<(V, A, R)>();
        let b = self.r.bytes(Op::Apply { key: Some(enc(key)?), func: func.into(), fp, arg: enc(arg)? })?;
        dec(&b)
    }
}

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends an item (Python's `append`).
    pub fn push(&self, item: &T) -> Result<(), ManagerError> {
        self.r.unit(Op::Push(enc(item)?))
    }
    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>, ManagerError> {
        self.r.maybe(Op::Pop)
    }
    /// The item at `index`.
    pub fn get(&self, index: usize) -> Result<Option<T>, ManagerError> {
        self.r.maybe(Op::Index(index as u64))
    }
    /// Replaces the item at `index`, returning the old one.
    pub fn set(&self, index: usize, item: &T) -> Result<T, ManagerError> {
        dec(&self.r.bytes(Op::SetIndex(index as u64, enc(item)?))?)
    }
    /// Number of items.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.r.num(Op::Len).map(|n| n as usize)
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        self.len().map(|n| n == 0)
    }
    /// Appends every item, in one atomic step.
    pub fn extend<'a, I: IntoIterator<Item = &'a T>>(&self, items: I) -> Result<(), ManagerError>
    where
        T: 'a,
    {
        let v = items.into_iter().map(|i| enc(i)).collect::<Result<Vec<_>, _>>()?;
        self.r.unit(Op::ExtendItems(v))
    }
    /// All items, in one atomic step.
    pub fn snapshot(&self) -> Result<Vec<T>, ManagerError> {
        self.r.items(Op::Snapshot)
    }
    /// Removes every item.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::Clear)
    }
}

impl NamespaceProxy {
    /// Sets field `name`.
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ManagerError> {
        self.r.unit(Op::SetAttr(name.into(), fingerprint::<T>(), enc(value)?))
    }
    /// Field `name`, if set ([`ManagerError::TypeMismatch`] if it holds another type).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ManagerError> {
        self.r.maybe(Op::GetAttr(name.into(), fingerprint::<T>()))
    }
    /// Removes field `name`; whether it was set.
    pub fn remove(&self, name: &str) -> Result<bool, ManagerError> {
        self.r.boolean(Op::DelAttr(name.into()))
    }
    /// The names of the fields that are set.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        match self.r.call(Op::Snapshot)? {
            Response::Fields(f) => Ok(f.into_iter().map(|(n, _, _)| n).collect()),
            _ => Err(BAD),
        }
    }
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value.
    pub fn get(&self) -> Result<T, ManagerError> {
        dec(&self.r.bytes(Op::Load)?)
    }
    /// Replaces the value, returning the old one.
    pub fn set(&self, value: &T) -> Result<T, ManagerError> {
        dec(&self.r.bytes(Op::Store(enc(value)?))?)
    }
    /// Runs the registered `fn(&mut T, A) -> R` named `func` on the value on
    /// the server, atomically; returns its result.
    pub fn update<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        func: &str,
        arg: &A,
    ) -> Result<R, ManagerError>
    where
        T: 'static,
    {
        let fp = fingerprint::<(T, A, R)>();
        dec(&self.r.bytes(Op::Apply { key: None, func: func.into(), fp, arg: enc(arg)? })?)
    }
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Appends an item, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<(), ManagerError> {
        self.r.unit(Op::Put(enc(item)?, None))
    }
    /// [`put`](Self::put) waiting at most `timeout` ([`ManagerError::Full`]).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), ManagerError> {
        self.r.unit(Op::Put(enc(item)?, micros(Some(timeout))))
    }
    /// Takes the oldest item, waiting while the queue is empty.
    pub fn get(&self) -> Result<T, ManagerError> {
        dec(&self.r.bytes(Op::Take(None))?)
    }
    /// [`get`](Self::get) waiting at most `timeout` ([`ManagerError::Empty`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, ManagerError> {
        dec(&self.r.bytes(Op::Take(micros(Some(timeout))))?)
    }
    /// Number of items.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.r.num(Op::Len).map(|n| n as usize)
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        self.len().map(|n| n == 0)
    }
}

/// Releases a managed lock when dropped (from [`LockProxy::lock`] /
/// [`RLockProxy::lock`]).
///
/// Not `Send` (as std's `MutexGuard`): the manager counts a lock as held by
/// the connection of the thread that took it, so only that thread can
/// release it; dropped on another thread, the guard could not.
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// fn moved(g: shmproc::manager::LockGuard<'_>) {
///     needs_send(g);
/// }
/// ```
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    r: &'a Remote,
    _this_thread: std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // A manager that is gone released the lock with itself.
        let _ = self.r.unit(Op::Release);
    }
}

macro_rules! lock_methods {
    ($name:ident) => {
        impl $name {
            /// Acquires, waiting as long as it takes.
            pub fn acquire(&self) -> Result<(), ManagerError> {
                match self.r.boolean(Op::Acquire(None))? {
                    true => Ok(()),
                    false => Err(ManagerError::Timeout),
                }
            }
            /// Acquires within `timeout`; `false` if it did not.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
                self.r.boolean(Op::Acquire(micros(Some(timeout))))
            }
            /// Acquires only if that needs no waiting.
            pub fn try_acquire(&self) -> Result<bool, ManagerError> {
                self.r.boolean(Op::Acquire(Some(0)))
            }
            /// Releases.
            pub fn release(&self) -> Result<(), ManagerError> {
                self.r.unit(Op::Release)
            }
        }
    };
}
lock_methods!(LockProxy);
lock_methods!(RLockProxy);
lock_methods!(SemaphoreProxy);
lock_methods!(ConditionProxy);

impl LockProxy {
    /// Acquires and returns a guard that releases on drop.
    pub fn lock(&self) -> Result<LockGuard<'_>, ManagerError> {
        self.acquire().map(|()| LockGuard { r: &self.r, _this_thread: std::marker::PhantomData })
    }
}

impl RLockProxy {
    /// Acquires and returns a guard that releases on drop.
    pub fn lock(&self) -> Result<LockGuard<'_>, ManagerError> {
        self.acquire().map(|()| LockGuard { r: &self.r, _this_thread: std::marker::PhantomData })
    }
}

impl EventProxy {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::SetFlag)
    }
    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::ClearFlag)
    }
    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        self.r.boolean(Op::IsSet)
    }
    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.r.boolean(Op::WaitFlag(None)).map(|_| ())
    }
    /// Waits at most `timeout`; whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.r.boolean(Op::WaitFlag(micros(Some(timeout))))
    }
}

impl ConditionProxy {
    /// Releases the lock (which this thread must hold), waits for a
    /// notification, takes the lock back.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.r.boolean(Op::Wait(None)).map(|_| ())
    }
    /// [`wait`](Self::wait) at most `timeout`; whether it was notified.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.r.boolean(Op::Wait(micros(Some(timeout))))
    }
    /// Wakes up to `n` waiters (the lock must be held).
    pub fn notify(&self, n: usize) -> Result<(), ManagerError> {
        self.r.unit(Op::Notify(n as u64))
    }
    /// Wakes every waiter (the lock must be held).
    pub fn notify_all(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::Notify(u64::MAX))
    }
}

impl BarrierProxy {
    /// Waits for all parties; returns this party's arrival index (0-based).
    pub fn wait(&self) -> Result<usize, ManagerError> {
        self.r.num(Op::BarrierWait(None)).map(|n| n as usize)
    }
    /// [`wait`](Self::wait) at most `timeout` (then the barrier breaks for all).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.r.num(Op::BarrierWait(micros(Some(timeout)))).map(|n| n as usize)
    }
    /// Breaks the barrier: waiters and later callers get [`ManagerError::BrokenBarrier`].
    pub fn abort(&self) -> Result<(), ManagerError> {
        self.r.unit(Op::Abort)
    }
    /// Number of parties.
    pub fn parties(&self) -> Result<usize, ManagerError> {
        self.r.num(Op::Len).map(|n| n as usize)
    }
}
