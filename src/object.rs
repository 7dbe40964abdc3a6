//! The typed-object layer: a [`Segment`], its header check and a typed view of
//! its payload, with one generic [`Builder`] and one [`ShmObject`]
//! implementation for every shmproc object.
//!
//! ## What an object is
//!
//! Every public primitive is a segment (see [`crate::segment`]) whose header
//! records its [`ObjectKind`], element [`TypeInfo`] and payload size, plus a
//! typed view of the payload. This module holds the pieces they share:
//!
//! * [`Builder<O>`]: the one builder. The segment options (`name`, `mode`,
//!   `open_timeout`, `allow_foreign_owner`, `allow_shared_write`,
//!   `unlink_on_drop`) and `open` / `open_handle` are written once here, for
//!   every `O`; each object adds only its own parameters and its `create` /
//!   `open_or_create` (which take different initial values). The familiar names
//!   (`ValueBuilder<T>`, `MutexBuilder<T>`, `QueueBuilder<T>`, ...) are aliases
//!   of `Builder<Value<T>>`, `Builder<Mutex<T>>`, `Builder<Queue<T>>`, ....
//! * [`Object`] (hidden): what an object tells the layer (its kind, its builder
//!   parameters, its segment, how to open it from a builder). [`ShmObject`] is
//!   implemented once, for every `Object`.
//! * `View<T>`: `len` elements of type `T` at a fixed offset in a validated
//!   segment. [`crate::Mutex`] (and through it [`crate::Value`] and
//!   [`crate::Array`]), [`crate::RawValue`], [`crate::RawArray`] and the state of
//!   every sync primitive are views. The queues and the pipe lay out their
//!   payloads themselves (ring engines) but are built and opened through the
//!   same `Builder` and `Object`, as is the untyped [`Segment`] (here, its
//!   `SegmentBuilder`).
//!
//! ## Objects as arguments (serde)
//!
//! Every object is `Serialize + Deserialize` (one `serde_object!` line per
//! type, or two hand-written impls where reopening needs more than the
//! handle, as for a pipe end). It serializes as an `ObjRef`: a named object
//! as its name, an anonymous one as the index of its fd among the fds that
//! travel beside the argument bytes. The task plumbing brackets the argument:
//!
//! * parent: `serialize_carrying(&arg)` gives the postcard bytes and a
//!   `Carried` (the anonymous objects' segments, in index order, and every
//!   object met, which the parent keeps until the child is joined so that a
//!   moved named object is not unlinked under the child);
//! * transport: the start method moves `Carried::raw_fds()` (Fork: inherited;
//!   ForkServer: `SCM_RIGHTS` with the request; Spawn: `FD_CLOEXEC` cleared
//!   between fork and exec, numbers in the gate variable);
//! * child: `set_inbound(fds, owned)`, then `deserialize_carried(&bytes)`,
//!   which opens each object from its fd (a duplicate) and closes owned fds.
//!
//! Outside `serialize_carrying`, an anonymous object does not serialize
//! ("anonymous objects travel only as Process/Pool arguments"); an index
//! with no fd behind it is an immediate, precise error. The SPSC endpoints
//! hold an exclusive claim and do not travel: pass the `Queue` and take the
//! endpoint in the child.
//!
//! ## Payload layouts of typed views
//!
//! | prefix          | offset of the data               | payload alignment      |
//! |-----------------|----------------------------------|------------------------|
//! | [`Prefix::None`]  | 0                                | `max(align_of T, 8)`   |
//! | [`Prefix::Lock`]  | 64 rounded up to `align_of T`    | `max(align_of T, 64)`  |
//!
//! With [`Prefix::Lock`] the payload starts with the 64-byte robust lock
//! ([`crate::sync`]'s `RawMutex`). The payload size is `offset + len *
//! size_of T`; the header's payload size therefore fixes the element count,
//! which `View::from_segment` recomputes and validates (a whole number of
//! elements, an aligned base) before any typed access.
//!
//! ## Algorithm
//!
//! Creating: check the element type (not zero-sized, alignment at most 4096),
//! compute the payload size with checked arithmetic, let the segment layer
//! create and zero-fill the segment, run the object's initialiser on the
//! payload, then publish the header (`READY`, release). Opening: build the
//! [`ObjectSpec`] the header must match (kind, type fingerprint, exact or
//! minimum payload size), let the segment layer wait for `READY` and validate
//! the header, then validate the view. Every mismatch is a precise
//! [`OpenError`].

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;

use bytemuck::Pod;

use crate::error::OpenError;
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::segment::{Handle, Segment, SegmentOptions, ShmObject};

/// What an object tells the typed-object layer. Implemented by every public
/// primitive; [`ShmObject`] and [`Builder`]'s `open` / `open_handle` are
/// written once on top of it. Not part of the API (hidden, unnameable).
#[doc(hidden)]
pub trait Object: Sized {
    /// The kind recorded in the segment header.
    const KIND: ObjectKind;
    /// The builder's object-specific settings (`()` when there are none).
    type Params: Default + Clone + fmt::Debug;
    /// The segment the object lives in.
    fn segment(&self) -> &Segment;
    /// Opens the object named by the builder, or the one behind `handle`.
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError>;
}

impl<O: Object> ShmObject for O {
    const KIND: ObjectKind = O::KIND;
    fn handle(&self) -> Handle {
        Object::segment(self).handle()
    }
    fn open_handle(handle: &Handle) -> Result<Self, OpenError> {
        Builder::<O>::default().open_handle(handle)
    }
    fn segment(&self) -> &Segment {
        Object::segment(self)
    }
}

/// The builder of every shmproc object: segment options, the object's own
/// settings, then `create`, `open`, `open_handle` or `open_or_create`.
///
/// Reached through each object's `builder()` and usually named by its alias
/// ([`crate::ValueBuilder`], [`crate::MutexBuilder`], [`crate::QueueBuilder`],
/// ...). Defaults: anonymous, mode `0o600`, a 5 s open timeout, refusing
/// foreign-owned or group/other-writable objects, unlinking a named object
/// when its creator's last handle drops.
pub struct Builder<O: Object> {
    pub(crate) opts: SegmentOptions,
    pub(crate) params: O::Params,
    _o: PhantomData<fn() -> O>,
}

impl<O: Object> Default for Builder<O> {
    fn default() -> Self {
        Builder::with_params(O::Params::default())
    }
}

impl<O: Object> Clone for Builder<O> {
    fn clone(&self) -> Self {
        Builder { opts: self.opts.clone(), params: self.params.clone(), _o: PhantomData }
    }
}

impl<O: Object> fmt::Debug for Builder<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("kind", &O::KIND)
            .field("opts", &self.opts)
            .field("params", &self.params)
            .finish()
    }
}

impl<O: Object> Builder<O> {
    /// A builder with default segment options and the given object settings.
    pub(crate) fn with_params(params: O::Params) -> Self {
        Builder { opts: SegmentOptions::default(), params, _o: PhantomData }
    }

    /// The same options for another object with the same settings (a
    /// `SemaphoreBuilder` finishing as a `BoundedSemaphore`, say).
    pub(crate) fn cast<P: Object<Params = O::Params>>(self) -> Builder<P> {
        Builder { opts: self.opts, params: self.params, _o: PhantomData }
    }

    /// Names the object (`/dev/shm/<name>`); without a name it is anonymous.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// Permission bits for `create` (default `0o600`, owner only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.opts.mode = mode;
        self
    }

    /// How long `open` waits for the creator to finish initialising (default 5 s).
    pub fn open_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.opts.open_timeout = timeout;
        self
    }

    /// Lets `open` accept an object owned by another user (refused by default).
    pub fn allow_foreign_owner(mut self, allow: bool) -> Self {
        self.opts.allow_foreign_owner = allow;
        self
    }

    /// Lets `open` accept an object writable by group or others (refused by default).
    pub fn allow_shared_write(mut self, allow: bool) -> Self {
        self.opts.allow_shared_write = allow;
        self
    }

    /// Whether the creator removes the name when its last handle drops (default true).
    pub fn unlink_on_drop(mut self, unlink: bool) -> Self {
        self.opts.unlink_on_drop = unlink;
        self
    }

    /// Opens an existing named object (set the name with [`Builder::name`]).
    /// Its kind, element type and size are checked against what this builder
    /// builds.
    pub fn open(self) -> Result<O, OpenError> {
        O::open_from(self, None)
    }

    /// Opens the object behind `handle` (a name, or an inherited fd; see
    /// [`ShmObject::handle`]).
    pub fn open_handle(self, handle: &Handle) -> Result<O, OpenError> {
        O::open_from(self, Some(handle))
    }

    /// Opens the segment named by the options, or the one behind `handle`, and
    /// validates its header against `spec`.
    pub(crate) fn open_segment(&self, handle: Option<&Handle>, spec: &ObjectSpec) -> Result<Segment, OpenError> {
        match handle {
            Some(h) => Segment::open_handle(h, &self.opts, spec),
            None => Segment::open_object(&self.opts, spec),
        }
    }
}

/// Array-like objects: how many elements to expect on `open`.
impl<O: Object<Params = Option<usize>>> Builder<O> {
    /// On `open`: require exactly this many elements ([`OpenError::SizeMismatch`] otherwise).
    pub fn len(mut self, len: usize) -> Self {
        self.params = Some(len);
        self
    }
}

/// What precedes the elements in a typed view's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// Nothing: the elements start the payload (raw views, sync states).
    None,
    /// The 64-byte robust lock (locked views: `Mutex`, `Value`, `Array`).
    Lock,
}

/// Bytes of the lock prefix.
const LOCK_SIZE: usize = 64;

impl Prefix {
    /// Where the elements start: after the prefix, aligned for `T`.
    fn data_offset<T>(self) -> usize {
        match self {
            Prefix::None => 0,
            Prefix::Lock => LOCK_SIZE.div_ceil(std::mem::align_of::<T>()) * std::mem::align_of::<T>(),
        }
    }

    /// The payload's alignment: the lock's cache line, and at least 8.
    fn payload_align<T>(self) -> usize {
        match self {
            Prefix::None => std::mem::align_of::<T>().max(8),
            Prefix::Lock => std::mem::align_of::<T>().max(LOCK_SIZE),
        }
    }
}

/// `len` elements of `T` at a fixed offset in a validated segment.
pub(crate) struct View<T> {
    seg: Segment,
    data: NonNull<T>,
    len: usize,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        View { seg: self.seg.clone(), data: self.data, len: self.len }
    }
}

impl<T> fmt::Debug for View<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.seg.fmt(f)
    }
}

impl<T: 'static> View<T> {
    fn check_type() -> Result<(), OpenError> {
        // A compile-time error where the element type is known (`Value<()>`,
        // `Array<()>`, `Mutex<()>`: use `Lock`); the run-time check stays for
        // the record.
        const {
            assert!(
                std::mem::size_of::<T>() > 0,
                "zero-sized element types cannot be shared (use shmproc::Lock for a Mutex<()>)"
            )
        };
        if std::mem::size_of::<T>() == 0 {
            return Err(OpenError::invalid("zero-sized element types cannot be shared"));
        }
        if std::mem::align_of::<T>() > 4096 {
            return Err(OpenError::invalid("element alignment above 4096 is not supported"));
        }
        Ok(())
    }

    fn payload_size(prefix: Prefix, len: usize) -> Result<usize, OpenError> {
        len.checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(prefix.data_offset::<T>()))
            .ok_or_else(|| OpenError::invalid(format!("{len} elements are too many")))
    }

    /// What an opener expects: `kind`, `T`'s fingerprint, and exactly `len`
    /// elements (any number, at least the prefix, when `None`).
    pub(crate) fn spec(kind: ObjectKind, prefix: Prefix, len: Option<usize>) -> Result<ObjectSpec, OpenError> {
        Self::check_type()?;
        let payload = match len {
            Some(n) => PayloadSize::Exact(Self::payload_size(prefix, n)? as u64),
            None => PayloadSize::AtLeast(prefix.data_offset::<T>() as u64),
        };
        Ok(ObjectSpec { kind, ty: TypeInfo::of::<T>(), payload })
    }

    /// Creates the segment for `len` elements; `init` gets the first element of
    /// the zero-filled, aligned, not yet published payload.
    pub(crate) fn create<O: Object>(
        b: &Builder<O>,
        prefix: Prefix,
        len: usize,
        init: impl FnOnce(NonNull<T>),
    ) -> Result<Self, OpenError> {
        Self::check_type()?;
        let size = Self::payload_size(prefix, len)?;
        let seg = Segment::create_object(
            &b.opts,
            O::KIND,
            TypeInfo::of::<T>(),
            size,
            prefix.payload_align::<T>(),
            |p, _| init(Self::first(p, prefix)),
        )?;
        Self::from_segment(seg, prefix)
    }

    /// Opens the named object or creates it for `len` elements with `init`.
    pub(crate) fn open_or_create<O: Object>(
        b: &Builder<O>,
        prefix: Prefix,
        len: usize,
        init: impl Fn(NonNull<T>),
    ) -> Result<Self, OpenError> {
        let spec = Self::spec(O::KIND, prefix, Some(len))?;
        let size = Self::payload_size(prefix, len)?;
        let seg = Segment::open_or_create_object(&b.opts, &spec, size, prefix.payload_align::<T>(), |p, _| {
            init(Self::first(p, prefix))
        })?;
        Self::from_segment(seg, prefix)
    }

    /// Opens the object named by `b` (or behind `handle`), expecting `len`
    /// elements (any number when `None`).
    pub(crate) fn open<O: Object>(
        b: &Builder<O>,
        handle: Option<&Handle>,
        prefix: Prefix,
        len: Option<usize>,
    ) -> Result<Self, OpenError> {
        let spec = Self::spec(O::KIND, prefix, len)?;
        Self::from_segment(b.open_segment(handle, &spec)?, prefix)
    }

    /// A view of `seg`, a spare segment made by [`View::create`] with no
    /// prefix (the pool's table: see `pool::spare`); its bytes are as its
    /// last user left them.
    pub(crate) fn reuse(seg: Segment) -> Result<Self, OpenError> {
        Self::from_segment(seg, Prefix::None)
    }

    /// The first element of a payload starting at `p`.
    fn first(p: NonNull<u8>, prefix: Prefix) -> NonNull<T> {
        // SAFETY: only called on a payload of payload_size(prefix, len) >=
        // data_offset bytes (created with that size), so the offset stays
        // inside the mapping.
        unsafe { p.add(prefix.data_offset::<T>()) }.cast()
    }

    /// Validates the payload of an opened or created segment as a view.
    fn from_segment(seg: Segment, prefix: Prefix) -> Result<Self, OpenError> {
        let off = prefix.data_offset::<T>();
        let bytes =
            seg.payload_len().checked_sub(off).ok_or_else(|| OpenError::corrupt("payload smaller than its lock"))?;
        let size = std::mem::size_of::<T>();
        if bytes % size != 0 {
            return Err(OpenError::corrupt(format!(
                "payload of {bytes} bytes is not a whole number of {size}-byte elements"
            )));
        }
        let base = seg.payload_ptr();
        if (base.as_ptr() as usize) % prefix.payload_align::<T>() != 0 {
            return Err(OpenError::corrupt("payload is misaligned for the element type"));
        }
        let data = Self::first(base, prefix);
        Ok(View { seg, data, len: bytes / size })
    }
}

impl<T: Pod> View<T> {
    /// Creates the segment holding a copy of `init`.
    pub(crate) fn create_copy<O: Object>(b: &Builder<O>, prefix: Prefix, init: &[T]) -> Result<Self, OpenError> {
        Self::create(b, prefix, init.len(), |dst| copy_into(dst, init))
    }

    /// Opens the named object or creates it holding a copy of `init`.
    pub(crate) fn open_or_create_copy<O: Object>(
        b: &Builder<O>,
        prefix: Prefix,
        init: &[T],
    ) -> Result<Self, OpenError> {
        Self::open_or_create(b, prefix, init.len(), |dst| copy_into(dst, init))
    }
}

/// Copies `init` into the zero-filled elements starting at `dst`.
fn copy_into<T: Pod>(dst: NonNull<T>, init: &[T]) {
    // SAFETY: `dst` starts init.len() aligned elements of an unpublished payload
    // sized for `init` (only the initialisers above call this): nothing else
    // touches it, and it cannot overlap the caller's `init`.
    unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), dst.as_ptr(), init.len()) }
}

impl<T> View<T> {
    /// The first element: aligned, `len` elements valid while the view lives.
    #[inline]
    pub(crate) fn data(&self) -> NonNull<T> {
        self.data
    }

    /// The number of elements.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The segment.
    #[inline]
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }
}

// ---------------------------------------------------------------------------
// Segment: the untyped object
// ---------------------------------------------------------------------------

/// Builder for a raw-bytes [`Segment`] ([`ObjectKind::Bytes`]).
pub type SegmentBuilder = Builder<Segment>;

impl Segment {
    /// A builder for a raw-bytes segment.
    pub fn builder() -> SegmentBuilder {
        Builder::default()
    }
}

impl Builder<Segment> {
    /// Payload size in bytes for `create` (must be > 0).
    pub fn size(mut self, size: usize) -> Self {
        self.params = size;
        self
    }

    /// Creates the segment (named if a name was given, else anonymous), zero-filled.
    pub fn create(self) -> Result<Segment, OpenError> {
        if self.params == 0 {
            return Err(OpenError::invalid("segment size must be greater than zero"));
        }
        Segment::create_object(&self.opts, ObjectKind::Bytes, TypeInfo::none(), self.params, 64, |_, _| {})
    }

    /// Opens the named segment, or creates it if it does not exist.
    pub fn open_or_create(self) -> Result<Segment, OpenError> {
        if self.params == 0 {
            return Err(OpenError::invalid("segment size must be greater than zero"));
        }
        Segment::open_or_create_object(&self.opts, &bytes_spec(), self.params, 64, |_, _| {})
    }
}

fn bytes_spec() -> ObjectSpec {
    ObjectSpec { kind: ObjectKind::Bytes, ty: TypeInfo::none(), payload: PayloadSize::AtLeast(0) }
}

impl Object for Segment {
    const KIND: ObjectKind = ObjectKind::Bytes;
    /// The payload size for `create`.
    type Params = usize;
    fn segment(&self) -> &Segment {
        self
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        b.open_segment(handle, &bytes_spec())
    }
}

// ---------------------------------------------------------------------------
// Objects as arguments: serde for every object
// ---------------------------------------------------------------------------

/// Most anonymous objects one argument may carry (their fds travel in one
/// `SCM_RIGHTS` message to the fork server, with its own three fds).
pub(crate) const MAX_CARRIED: usize = 60;

/// How an object travels inside a serialized argument: a named object by its
/// name; an anonymous one by its index in the fds that travel beside the
/// argument bytes (see [`Carried`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum ObjRef {
    /// A named object: the child opens the name.
    Name(String),
    /// An anonymous object: index into the fds the start method carried.
    Fd(u32),
}

/// What a carried object asks the parent to do once the child's pid is
/// known: `(pid, start_time)` (start time 0 if it could not be read). A queue
/// half reserves a participant entry for the child with its role; the boxed
/// closure holds a clone of the half, so the side stays connected until then.
pub(crate) type ChildHook = Box<dyn FnOnce(u32, u64) + Send>;

/// The shmproc objects met while serializing a process (or pool task)
/// argument with [`serialize_carrying`].
#[derive(Default)]
pub(crate) struct Carried {
    /// The anonymous objects, in index order: the start method transports
    /// their fds (Fork: inherited; ForkServer: `SCM_RIGHTS`; Spawn: kept open
    /// across the exec) and the child maps index `i` to the `i`-th fd.
    pub(crate) fds: Vec<Segment>,
    /// Every object met, named ones too: the parent keeps them until the child
    /// was joined, so a named object's creator cannot unlink the name (its
    /// handle was moved into the argument and dropped) before the child opened it.
    pub(crate) keep: Vec<Segment>,
    /// Run by the start path once the child's pid is known (every start
    /// method; see [`on_child_start`] and [`run_child_hooks`]). Dropped
    /// unrun if the start fails.
    pub(crate) hooks: Vec<ChildHook>,
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carried")
            .field("fds", &self.fds)
            .field("keep", &self.keep)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl Carried {
    /// The raw fds to transport, in index order.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(|s| s.fd().as_raw_fd()).collect()
    }
}

/// While an object is serialized inside [`serialize_carrying`]: `hook` runs
/// in the parent once the child's pid is known. Outside one it is dropped at
/// once (nothing is being handed to a child).
pub(crate) fn on_child_start(hook: impl FnOnce(u32, u64) + Send + 'static) {
    OUTBOUND.with(|o| {
        if let Some(c) = o.borrow_mut().as_mut() {
            c.hooks.push(Box::new(hook));
        }
    });
}

/// Runs the hooks of a started child's argument (its pid and, read once
/// here, its start time). Called by the `Process` start path right after the
/// start method returned the pid, before the caller's code runs again.
pub(crate) fn run_child_hooks(hooks: Vec<ChildHook>, pid: u32, start_time: u64) {
    if hooks.is_empty() {
        return;
    }
    let start_time = match start_time {
        0 => crate::sys::identity_of(pid).map_or(0, |who| who.start_time),
        known => known,
    };
    for h in hooks {
        h(pid, start_time);
    }
}

/// Where the objects of the argument being decoded come from.
struct Inbound {
    fds: Vec<RawFd>,
    /// Whether the table owns the fds (closed once the argument is decoded).
    owned: bool,
}

thread_local! {
    static OUTBOUND: RefCell<Option<Carried>> = const { RefCell::new(None) };
    static INBOUND: RefCell<Option<Inbound>> = const { RefCell::new(None) };
}

/// Serializes a process or task argument with postcard, collecting the
/// shmproc objects in it: named ones travel by name, anonymous ones by the
/// index of their fd in the returned [`Carried`].
pub(crate) fn serialize_carrying<A: serde::Serialize>(arg: &A) -> Result<(Vec<u8>, Carried), String> {
    OUTBOUND_ERROR.with(|e| e.take());
    let previous = OUTBOUND.with(|o| o.replace(Some(Carried::default())));
    let bytes = postcard::to_allocvec(arg);
    let carried = OUTBOUND.with(|o| o.replace(previous)).unwrap_or_default();
    match bytes {
        Ok(b) => Ok((b, carried)),
        Err(postcard::Error::SerdeSerCustom) => Err(OUTBOUND_ERROR.with(|e| e.take()).unwrap_or_default()),
        Err(e) => Err(format!("encoding the argument: {e}")),
    }
}

thread_local! {
    /// postcard drops a custom error's text: the message is kept here.
    static OUTBOUND_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    static INBOUND_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether a [`serialize_carrying`] runs on this thread (an object being
/// serialized is then moved into a child's argument).
pub(crate) fn carrying() -> bool {
    OUTBOUND.with(|o| o.borrow().is_some())
}

/// In a child, before its target's argument is decoded: the fds carried for
/// it, in index order. `owned`: close them once the argument is decoded (a
/// Spawn child's inherited numbers, a fork server's received ones).
pub(crate) fn set_inbound(fds: Vec<RawFd>, owned: bool) {
    INBOUND.with(|i| *i.borrow_mut() = Some(Inbound { fds, owned }));
}

/// Decodes a process or task argument with the fds set by [`set_inbound`]
/// (none if it was not called), then closes them if they were owned: every
/// decoded object holds its own duplicate.
pub(crate) fn deserialize_carried<A: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<A, String> {
    INBOUND_ERROR.with(|e| e.take());
    let r = crate::decode::from_bytes(bytes);
    if let Some(inb) = INBOUND.with(|i| i.borrow_mut().take()) {
        if inb.owned {
            for fd in inb.fds {
                // SAFETY: owned table: these numbers were handed to this process
                // for the argument only, and no OwnedFd in this process owns them.
                unsafe { crate::sys::close_raw(fd) };
            }
        }
    }
    r.map_err(|e| match (e, INBOUND_ERROR.with(|m| m.take())) {
        (postcard::Error::SerdeDeCustom, Some(m)) => m,
        (e, _) => format!("decoding the argument in the child: {e}"),
    })
}

impl ObjRef {
    /// How `seg` travels; records it in the running [`serialize_carrying`].
    /// Outside one, an anonymous object cannot travel (its fd means nothing
    /// in another process): a clear error.
    pub(crate) fn outbound<E: serde::ser::Error>(seg: &Segment) -> Result<ObjRef, E> {
        OUTBOUND.with(|o| {
            let mut o = o.borrow_mut();
            if let Some(c) = o.as_mut() {
                c.keep.push(seg.clone());
            }
            if let Some(n) = seg.name() {
                return Ok(ObjRef::Name(n.to_owned()));
            }
            let msg = match o.as_mut() {
                Some(c) if c.fds.len() < MAX_CARRIED => {
                    c.fds.push(seg.clone());
                    return Ok(ObjRef::Fd(c.fds.len() as u32 - 1));
                }
                Some(_) => format!("an argument carries at most {MAX_CARRIED} anonymous shmproc objects"),
                None => format!(
                    "anonymous {:?} object: anonymous objects travel only as Process/Pool arguments \
                     (name it to send it elsewhere)",
                    seg.kind()
                ),
            };
            OUTBOUND_ERROR.with(|e| *e.borrow_mut() = Some(msg.clone()));
            Err(E::custom(msg))
        })
    }

    /// The handle to open: a name, or the fd carried at this index. An index
    /// that no carried fd matches is an immediate, precise error.
    pub(crate) fn resolve<E: serde::de::Error>(self, kind: ObjectKind) -> Result<Handle, E> {
        let fail = |msg: String| {
            INBOUND_ERROR.with(|e| *e.borrow_mut() = Some(msg.clone()));
            E::custom(msg)
        };
        match self {
            ObjRef::Name(n) => Ok(Handle::Name(n)),
            ObjRef::Fd(i) => INBOUND.with(|t| match t.borrow().as_ref() {
                Some(t) => match t.fds.get(i as usize) {
                    Some(&fd) => Ok(Handle::Fd(fd)),
                    None => Err(fail(format!(
                        "anonymous {kind:?} object #{i} cannot be resolved: only {} fds came with the argument",
                        t.fds.len()
                    ))),
                },
                None => Err(fail(format!(
                    "anonymous {kind:?} object #{i} cannot be resolved here: anonymous objects travel only as \
                     Process/Pool arguments"
                ))),
            }),
        }
    }

    /// Opens the object behind a decoded reference with `open`.
    pub(crate) fn open_with<O, E: serde::de::Error>(
        self,
        kind: ObjectKind,
        open: impl FnOnce(&Handle) -> Result<O, OpenError>,
    ) -> Result<O, E> {
        let h = self.resolve::<E>(kind)?;
        open(&h).map_err(|e| {
            let msg = format!("opening the {kind:?} object {}: {e}", crate::error::short(&h.to_string()));
            INBOUND_ERROR.with(|m| *m.borrow_mut() = Some(msg.clone()));
            E::custom(msg)
        })
    }
}

/// `Serialize` of any object: its [`ObjRef`]. Used by [`serde_object!`].
#[doc(hidden)]
pub fn serialize_object<O: ShmObject, S: serde::Serializer>(o: &O, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&ObjRef::outbound::<S::Error>(o.segment())?, s)
}

/// `Deserialize` of any object: opens its [`ObjRef`] with the type's own
/// validation. Used by [`serde_object!`].
#[doc(hidden)]
pub fn deserialize_object<'de, O: ShmObject, D: serde::Deserializer<'de>>(d: D) -> Result<O, D::Error> {
    let r = <ObjRef as serde::Deserialize>::deserialize(d)?;
    r.open_with(O::KIND, |h| O::open_handle(h))
}

/// `Serialize` + `Deserialize` for a shmproc object type, one line per type:
/// `serde_object!([T: Pod] Value<T>);` or `serde_object!([] Event);`.
///
/// How a new object type travels (as a `Process`/`Pool` argument, or by
/// name anywhere serde goes): implement [`Object`] (which gives
/// [`ShmObject`]), then add this line next to the type. A type whose
/// reopening needs more than its handle (a pipe end, a sender or receiver
/// role) writes the two impls itself: serialize `(its extra, ObjRef::outbound(seg)?)`
/// and deserialize the pair, then open with `ObjRef::open_with`.
macro_rules! serde_object {
    ([$($g:tt)*] $ty:ty) => {
        impl<$($g)*> serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::object::serialize_object(self, s)
            }
        }
        impl<'de, $($g)*> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::object::deserialize_object(d)
            }
        }
    };
}
pub(crate) use serde_object;

serde_object!([] Segment);

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{
        Array, Barrier, BoundedSemaphore, Condition, Event, FrameQueue, JoinableQueue, Mutex, ObjectKind, OpenError,
        Pipe, Queue, RawArray, RawValue, ReentrantMutex, Segment, Semaphore, ShmObject, Value,
    };

    /// Opens `obj`'s handle as `T` through the one `ShmObject` path and checks
    /// that it is the same kind of object, of the same size; then opens it as `W`, which must fail with
    /// a kind mismatch.
    fn roundtrip<T: ShmObject, W: ShmObject>(obj: &T) {
        let back = T::open_handle(&obj.handle()).unwrap();
        assert_eq!(back.segment().kind(), T::KIND);
        assert_eq!(back.segment().payload_len(), obj.segment().payload_len());
        match W::open_handle(&obj.handle()) {
            Err(OpenError::KindMismatch { expected, found }) => {
                assert_eq!(expected, W::KIND);
                assert_eq!(found, T::KIND);
            }
            Err(e) => panic!("{:?} opened as {:?}: {e}", T::KIND, W::KIND),
            Ok(_) => panic!("{:?} opened as {:?}", T::KIND, W::KIND),
        }
    }

    #[test]
    fn every_object_opens_through_the_one_shm_object_path() {
        roundtrip::<_, Mutex<u64>>(&Value::<u64>::anonymous(1).unwrap());
        roundtrip::<_, Value<u64>>(&Mutex::<u64>::anonymous(1).unwrap());
        roundtrip::<_, RawArray<f64>>(&Array::<f64>::anonymous(&[1.0, 2.0]).unwrap());
        roundtrip::<_, Array<u32>>(&RawArray::<u32>::anonymous(&[1, 2]).unwrap());
        roundtrip::<_, RawArray<u32>>(&RawValue::<u32>::anonymous(1).unwrap());
        roundtrip::<_, Event>(&Segment::builder().size(64).create().unwrap());
        roundtrip::<_, Condition>(&Event::anonymous().unwrap());
        roundtrip::<_, Event>(&Condition::anonymous().unwrap());
        roundtrip::<_, Barrier>(&ReentrantMutex::anonymous().unwrap());
        roundtrip::<_, Semaphore>(&Barrier::anonymous(2).unwrap());
        roundtrip::<_, BoundedSemaphore>(&Semaphore::anonymous(1).unwrap());
        roundtrip::<_, Semaphore>(&BoundedSemaphore::anonymous(1).unwrap());
        roundtrip::<_, JoinableQueue<u64>>(&Queue::<u64>::anonymous(4).unwrap());
        roundtrip::<_, Queue<u64>>(&JoinableQueue::<u64>::anonymous(4).unwrap());
        roundtrip::<_, Queue<u64>>(&FrameQueue::builder().create().unwrap());
        let (a, _b) = Pipe::new().unwrap();
        assert_eq!(a.segment().kind(), ObjectKind::Pipe);
        assert!(matches!(Queue::<u64>::open_handle(&a.handle()), Err(OpenError::KindMismatch { .. })));
    }

    #[test]
    fn arguments_carry_anonymous_objects_by_index_and_named_ones_by_name() {
        use super::{deserialize_carried, serialize_carrying, set_inbound, ObjRef};
        let anon = Value::<u64>::anonymous(5).unwrap();
        let name = format!("shmproc-test-carry-{}", std::process::id());
        let named = Array::<u32>::create(&name, &[1, 2]).unwrap();
        let (bytes, carried) = serialize_carrying(&(anon.clone(), 7u8, named.clone())).unwrap();
        assert_eq!(carried.fds.len(), 1);
        assert_eq!(carried.keep.len(), 2);
        // In-process stand-in for a child: the table maps index 0 to the fd.
        set_inbound(carried.raw_fds(), false);
        let (v, n, a): (Value<u64>, u8, Array<u32>) = deserialize_carried(&bytes).unwrap();
        v.update(|x| *x += n as u64).unwrap();
        assert_eq!(anon.get().unwrap(), 12);
        assert_eq!(a.to_vec().unwrap(), vec![1, 2]);
        // Outside an argument, an anonymous object does not serialize.
        assert!(postcard::to_allocvec(&anon).is_err());
        // An index past the carried fds is an immediate, precise error.
        let stray = postcard::to_allocvec(&ObjRef::Fd(2)).unwrap();
        set_inbound(Vec::new(), false);
        let e = deserialize_carried::<Value<u64>>(&stray).unwrap_err();
        assert!(e.contains("#2 cannot be resolved: only 0 fds"), "{e}");
        let e = deserialize_carried::<Value<u64>>(&stray).unwrap_err();
        assert!(e.contains("travel only as Process/Pool arguments"), "{e}");
    }

    /// Every object type travels as an argument (in-process stand-in for a child).
    #[test]
    fn every_object_type_is_a_serde_argument() {
        use super::{deserialize_carried, serialize_carrying, set_inbound};
        fn travel<T: ShmObject + serde::Serialize + serde::de::DeserializeOwned>(obj: &T) {
            let (bytes, carried) = serialize_carrying(obj).unwrap();
            assert_eq!(carried.fds.len(), 1, "{:?}", T::KIND);
            set_inbound(carried.raw_fds(), false);
            let back: T = deserialize_carried(&bytes).unwrap_or_else(|e| panic!("{:?}: {e}", T::KIND));
            assert_eq!(back.segment().kind(), T::KIND);
            assert_eq!(back.segment().payload_len(), obj.segment().payload_len());
        }
        travel(&Value::<u64>::anonymous(1).unwrap());
        travel(&Array::<f64>::anonymous(&[1.0, 2.0]).unwrap());
        travel(&RawValue::<u32>::anonymous(1).unwrap());
        travel(&RawArray::<u32>::anonymous(&[1, 2]).unwrap());
        travel(&Mutex::<u64>::anonymous(1).unwrap());
        travel(&crate::Lock::anonymous().unwrap());
        travel(&ReentrantMutex::anonymous().unwrap());
        travel(&Semaphore::anonymous(1).unwrap());
        travel(&BoundedSemaphore::anonymous(1).unwrap());
        travel(&Event::anonymous().unwrap());
        travel(&Condition::anonymous().unwrap());
        travel(&Barrier::anonymous(2).unwrap());
        travel(&Queue::<u64>::anonymous(4).unwrap());
        travel(&JoinableQueue::<u64>::anonymous(4).unwrap());
        travel(&FrameQueue::builder().create().unwrap());
        travel(&Segment::builder().size(64).create().unwrap());
        // A pipe end travels with its end; the parent's claim is given up.
        let (a, b) = Pipe::new().unwrap();
        let (bytes, carried) = serialize_carrying(&b).unwrap();
        drop(b);
        set_inbound(carried.raw_fds(), false);
        let b: crate::Connection = deserialize_carried(&bytes).unwrap();
        assert_eq!(b.end(), crate::pipe::End::B);
        a.send(&5u8).unwrap();
        assert_eq!(b.recv::<u8>().unwrap(), 5);
    }

    #[test]
    fn value_array_and_mutex_share_one_guard() {
        let v = Value::<u64>::anonymous(3).unwrap();
        let a = Array::<u64>::anonymous(&[1, 2, 3]).unwrap();
        let g: crate::MutexGuard<'_, u64> = v.lock().unwrap();
        let h: crate::MutexGuard<'_, [u64]> = a.lock().unwrap();
        assert_eq!(*g + h.iter().sum::<u64>(), 9);
        g.mark_consistent();
        h.mark_consistent();
        drop((g, h));
        // The Array's length survives a reopen by handle, through `len(n)` too.
        let b = Array::<u64>::builder().len(3).open_handle(&a.handle()).unwrap();
        assert_eq!(b.len(), 3);
        assert!(matches!(Array::<u64>::builder().len(4).open_handle(&a.handle()), Err(OpenError::SizeMismatch { .. })));
    }
}
