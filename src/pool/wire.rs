//! Frames on the pool's queues, and the typed functions that run one item.
//!
//! ## Task frame (parent to one worker)
//! | bytes | field |
//! |---|---|
//! | 0..8 | chunk id (`u64` LE; [`STOP`] asks the worker to exit) |
//! | 8..16 | offset of the item runner ([`run_one`]) from the anchor (`i64` LE) |
//! | 16..24 | offset of the task `fn` from the anchor (`i64` LE) |
//! | 24..28 | item count (`u32` LE) |
//! | 28..32 | sub-chunk size (`u32` LE, at least 1): the caller's `chunksize` |
//! | then, per item | tag [`POSTCARD`] then length (`u32` LE) and the postcard bytes of the argument, or tag [`PLAIN`]` + kind` then the value's fixed-width bytes (see `plain.rs`) |
//!
//! A task frame is a *run*: consecutive items of one job, made of sub-chunks
//! of the caller's chunksize (see `dispatch.rs`: the pool's bookkeeping is
//! per run, so a chunksize of 1 does not cost a record per item).
//!
//! ## Result frame (a worker to the parent)
//! | bytes | field |
//! |---|---|
//! | 0..8 | chunk id ([`READY`] / [`INIT_FAILED`] after the initializer) |
//! | 8..12 | worker slot (`u32` LE) |
//! | 12..16 | slot incarnation (`u32` LE) |
//! | 16..20 | index within the chunk of the frame's first item (`u32` LE; a chunk whose results exceed one frame is answered in several) |
//! | 20..24 | item count |
//! | 24..28 | bytes of the items that follow (`u32` LE) |
//! | then, per item | tag [`POSTCARD`] (ok) or [`ERROR`], length (`u32` LE), postcard bytes of the result or of a [`WireError`]; or tag [`PLAIN`]` + kind` (ok) and the result's fixed-width bytes |
//!
//! A queue frame may hold several task frames (or result frames) back to
//! back: a task frame is self-delimiting through its item count and
//! lengths, a result frame through its byte count (so the dispatcher finds
//! its end without reading every item; the caller checks each item against
//! it when it decodes).
//!
//! Offsets are rebased in the worker with the same checked mechanism a
//! [`Process`](crate::Process) uses for its target (`process/child.rs`). Every
//! length and count read from a frame is checked against the frame.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::TaskError;
use super::plain::{self, Kind, Plain};
use super::worker::RunCx;
use crate::process::child::payload_text;

/// Chunk id of a task frame that asks the worker to exit.
pub(crate) const STOP: u64 = u64::MAX;
/// Chunk id of the result frame a worker sends once its initializer ran.
pub(crate) const READY: u64 = u64::MAX;
/// Chunk id of the result frame of a worker whose initializer failed.
pub(crate) const INIT_FAILED: u64 = u64::MAX - 1;

/// Item tag: a postcard-encoded value behind a `u32` length.
pub(crate) const POSTCARD: u8 = 0;
/// Result item tag: a [`WireError`] (postcard, behind a `u32` length).
pub(crate) const ERROR: u8 = 1;
/// Item tag of a plain value: `PLAIN + kind code`, then the value's bytes.
pub(crate) const PLAIN: u8 = 16;

/// One item of a frame, as read: its bytes lie inside the frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Item<'a> {
    Postcard(&'a [u8]),
    Plain(Kind, &'a [u8]),
}

/// Decodes an item as a `T`.
#[inline]
pub(crate) fn decode_item<T: DeserializeOwned>(item: Item<'_>) -> Result<T, String> {
    match item {
        Item::Postcard(b) => crate::decode::from_bytes(b).map_err(|e| e.to_string()),
        Item::Plain(kind, b) => plain::decode(kind, b).map_err(|e| e.to_string()),
    }
}

/// The plain item whose tag is `tag` (bounds-checked), if `tag` is a plain one.
#[inline]
fn read_plain<'a>(r: &mut Reader<'a>, tag: u8) -> Option<Item<'a>> {
    let kind = Kind::from_code(tag.checked_sub(PLAIN)?)?;
    Some(Item::Plain(kind, r.bytes(kind.width())?))
}

/// Reads the next argument item of a task frame; `None` if it is malformed.
#[inline]
pub(crate) fn read_arg<'a>(r: &mut Reader<'a>) -> Option<Item<'a>> {
    match r.u8()? {
        POSTCARD => Some(Item::Postcard(r.sized()?)),
        tag => read_plain(r, tag),
    }
}

/// Reads the next item of a result frame: a result, or the bytes of a
/// [`WireError`]; `None` if it is malformed.
#[inline]
pub(crate) fn read_result<'a>(r: &mut Reader<'a>) -> Option<Result<Item<'a>, &'a [u8]>> {
    match r.u8()? {
        POSTCARD => Some(Ok(Item::Postcard(r.sized()?))),
        ERROR => Some(Err(r.sized()?)),
        tag => read_plain(r, tag).map(Ok),
    }
}

/// Reads the items of a frame one after another.
///
/// Plain items of one kind in a row are read without waiting for each tag:
/// with [`read_arg`] alone, where the next item starts depends on a load of
/// this item's tag, a chain through memory that cost a trivial `map` about
/// 8 ns per item in the caller. Here the next position is known from the
/// previous kind; the tag is only compared (a predicted branch).
pub(crate) struct Items<'a> {
    buf: &'a [u8],
    at: usize,
    /// Tag of the previous item if it was plain (0: it was not).
    run: u8,
    kind: Kind,
    width: usize,
}

impl<'a> Items<'a> {
    /// Items of `buf` from byte `at`.
    pub(crate) fn new(buf: &'a [u8], at: usize) -> Self {
        Items { buf, at, run: 0, kind: Kind::U8, width: 1 }
    }

    /// Where the next item starts.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    /// The next item if it is plain of the previous item's kind.
    #[inline(always)]
    fn same_kind(&mut self) -> Option<Item<'a>> {
        let end = self.at.checked_add(1 + self.width)?;
        if self.run == 0 || end > self.buf.len() || self.buf[self.at] != self.run {
            return None;
        }
        let b = &self.buf[self.at + 1..end];
        self.at = end;
        Some(Item::Plain(self.kind, b))
    }

    #[inline]
    fn note(&mut self, item: Option<&Item<'a>>) {
        match item {
            Some(Item::Plain(k, _)) => {
                self.run = PLAIN + *k as u8;
                self.kind = *k;
                self.width = k.width();
            }
            _ => self.run = 0,
        }
    }

    /// Decodes the run of plain items of one kind that starts here, at most
    /// `max`, straight into `out` ([`plain::decode_run`]); returns how many.
    /// 0 when the next item is not plain or does not decode as a `T`: read
    /// it with [`next_result`](Items::next_result), which names its error.
    #[inline]
    pub(crate) fn plain_run_into<T: DeserializeOwned>(&mut self, max: usize, out: &mut Vec<T>) -> usize {
        let Some(kind) = self.buf.get(self.at).and_then(|t| t.checked_sub(PLAIN)).and_then(Kind::from_code) else {
            return 0;
        };
        let n = plain::decode_run(kind, &self.buf[self.at..], max, out);
        self.at += n * (1 + kind.width());
        self.run = 0;
        n
    }

    /// The next argument item of a task frame ([`read_arg`]).
    #[inline]
    pub(crate) fn next_arg(&mut self) -> Option<Item<'a>> {
        if let Some(item) = self.same_kind() {
            return Some(item);
        }
        let mut r = Reader { buf: self.buf, at: self.at };
        let item = read_arg(&mut r);
        self.at = r.at;
        self.note(item.as_ref());
        item
    }

    /// The next item of a result frame ([`read_result`]).
    #[inline]
    pub(crate) fn next_result(&mut self) -> Option<Result<Item<'a>, &'a [u8]>> {
        if let Some(item) = self.same_kind() {
            return Some(Ok(item));
        }
        let mut r = Reader { buf: self.buf, at: self.at };
        let item = read_result(&mut r);
        self.at = r.at;
        self.note(item.as_ref().and_then(|i| i.as_ref().ok()));
        item
    }
}

/// Appends a plain item (argument or result: the tag is the same).
#[inline]
pub(crate) fn push_plain(out: &mut Vec<u8>, p: Plain) {
    plain::push(out, PLAIN + p.kind as u8, p);
}

/// Appends an argument item holding `a` (plain when it is one primitive).
#[inline]
pub(crate) fn push_arg<A: Serialize + ?Sized>(out: &mut Vec<u8>, a: &A) -> Result<(), String> {
    if let Some(p) = plain::encode(a) {
        push_plain(out, p);
        return Ok(());
    }
    out.push(POSTCARD);
    append_len_prefixed(out, a).inspect_err(|_| {
        out.pop();
    })
}

/// Bytes before the first item of a task frame.
pub(crate) const TASK_HEADER: usize = 32;

/// Function field of a task frame that names a [`Closure`](super::Closure)
/// rather than a function: `CLOSURE_TAG + index` (no code offset is near
/// `i64::MIN`). Its runner is a `closure::run_closure`, which checks the type.
pub(crate) const CLOSURE_TAG: i64 = i64::MIN;

/// The closure index in a function field, if it names one.
pub(crate) fn closure_index(func: i64) -> Option<usize> {
    let i = func.wrapping_sub(CLOSURE_TAG) as u64;
    (i < super::closure::MAX_CLOSURES as u64).then_some(i as usize)
}
/// Bytes before the first item of a result frame.
pub(crate) const RESULT_HEADER: usize = 28;

/// What a worker reports for an item that has no result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    Panicked { message: String, location: Option<String> },
    Serialize(String),
    Deserialize(String),
    Init(String),
}

impl From<WireError> for TaskError {
    fn from(e: WireError) -> TaskError {
        match e {
            WireError::Panicked { message, location } => TaskError::Panicked { message, location },
            WireError::Serialize(reason) => TaskError::Serialize { reason },
            WireError::Deserialize(reason) => TaskError::Deserialize { reason },
            WireError::Init(reason) => TaskError::InitializerFailed { reason },
        }
    }
}

/// Runs every item of a run: `func` is the task's address (or a closure's
/// index); the runner takes each argument from the [`RunCx`] and answers it
/// there. Monomorphised per task type, so the loop over the items inlines
/// the decoding, the call and the encoding.
pub(crate) type RunMany = fn(usize, &mut RunCx<'_, '_, '_>);
/// A postcard output that appends to a borrowed vector: bytes go straight
/// into it (postcard's `to_extend` takes an iterator per write), and a failed
/// encoding leaves the buffer to us.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // postcard hands every varint over as a short slice: copied inline,
        // not by a `memcpy` call per item (which cost a trivial `map` a fifth
        // of its time).
        let len = self.0.len();
        self.0.reserve(data.len());
        // SAFETY: `reserve` made room for `data.len()` bytes after `len`; the
        // source is a different, borrowed buffer; the bytes are initialised
        // by the copy before `set_len` counts them.
        unsafe {
            copy_short(data, self.0.as_mut_ptr().add(len));
            self.0.set_len(len + data.len());
        }
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Copies `src` to `dst`: up to 16 bytes one byte at a time, inline;
/// longer ones with `copy_nonoverlapping`.
///
/// Short copies are mostly postcard's varints, which it writes byte by byte
/// into a stack buffer just before: wider loads of those bytes would stall on
/// store forwarding (measured: half the encoder's time), and a `memcpy` call
/// per item costs more than the copy.
///
/// # Safety
/// `dst` is valid for `src.len()` bytes of writes and does not overlap `src`.
#[inline(always)]
pub(crate) unsafe fn copy_short(src: &[u8], dst: *mut u8) {
    let n = src.len();
    if n > 16 {
        // SAFETY: the caller vouches for `dst[..n]`; no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) };
        return;
    }
    for (i, &b) in src.iter().enumerate().take(16) {
        // SAFETY: i < n, and the caller vouches for `dst[..n]`. The volatile
        // write keeps LLVM from turning this loop back into a `memcpy` call.
        unsafe { std::ptr::write_volatile(dst.add(i), b) };
    }
}

/// Appends `len` (u32 LE) + postcard bytes of `v` to `out`; on failure `out`
/// is left as it was.
#[inline]
pub(crate) fn append_len_prefixed<V: Serialize + ?Sized>(out: &mut Vec<u8>, v: &V) -> Result<(), String> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    match postcard::serialize_with_flavor(v, Append(out)) {
        Ok(()) => {
            let len = out.len() - at - 4;
            match u32::try_from(len) {
                Ok(n) => {
                    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
                    Ok(())
                }
                Err(_) => {
                    out.truncate(at);
                    Err(format!("{len} bytes do not fit a frame"))
                }
            }
        }
        Err(e) => {
            out.truncate(at);
            Err(e.to_string())
        }
    }
}

/// Appends an error item.
pub(crate) fn push_err(out: &mut Vec<u8>, e: &WireError) {
    out.push(ERROR);
    if append_len_prefixed(out, e).is_err() {
        // Cannot happen for these plain strings; keep the frame well formed.
        out.extend_from_slice(&0u32.to_le_bytes());
    }
}

/// Appends an ok item holding `r` (plain when it is one primitive), or a
/// `Serialize` error item.
#[inline]
pub(crate) fn push_ok<R: Serialize>(out: &mut Vec<u8>, r: &R) {
    if let Some(p) = plain::encode(r) {
        return push_plain(out, p);
    }
    out.push(POSTCARD);
    if let Err(reason) = append_len_prefixed(out, r) {
        out.pop();
        push_err(out, &WireError::Serialize(format!("encoding the result in the worker: {reason}")));
    }
}

thread_local! {
    /// Location of the last panic in this worker thread (set by the worker's panic hook).
    pub(crate) static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Answers the current item of `cx` with `f()`'s result, or with its panic.
#[inline]
pub(crate) fn call_captured<R: Serialize>(cx: &mut RunCx<'_, '_, '_>, f: impl FnOnce() -> R) {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => cx.ok(&r),
        Err(p) => cx.panicked(p),
    }
}

/// Answers an argument that did not decode.
#[cold]
pub(crate) fn bad_arg(cx: &mut RunCx<'_, '_, '_>, e: String) {
    cx.err(&WireError::Deserialize(format!("decoding the argument in the worker: {e}")));
}

/// The item runner for a `fn(A) -> R` task.
pub(crate) fn run_one<A: DeserializeOwned, R: Serialize>(func: usize, cx: &mut RunCx<'_, '_, '_>) {
    // SAFETY: `func` is a `fn(A) -> R` address sent with this runner's own offset in
    // one frame, rebased by the checked anchor offset of the same executable; `fn`
    // pointers and `usize` have the same size.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    while let Some(arg) = cx.next_arg() {
        match decode_item::<A>(arg) {
            Ok(a) => call_captured(cx, || f(a)),
            Err(e) => bad_arg(cx, e),
        }
    }
}

/// The item runner for a `fn(A, B) -> R` task (starmap).
pub(crate) fn run_star2<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(
    func: usize,
    cx: &mut RunCx<'_, '_, '_>,
) {
    // SAFETY: as in `run_one`, for a `fn(A, B) -> R`.
    let f: fn(A, B) -> R = unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(func) };
    while let Some(arg) = cx.next_arg() {
        match decode_item::<(A, B)>(arg) {
            Ok((a, b)) => call_captured(cx, || f(a, b)),
            Err(e) => bad_arg(cx, e),
        }
    }
}

/// Runs an initializer `fn(A)`: `Err` with the panic message or decoding error.
pub(crate) type RunInit = fn(usize, &[u8]) -> Result<(), String>;

/// The initializer runner for a `fn(A)`.
pub(crate) fn run_init<A: DeserializeOwned>(func: usize, arg: &[u8]) -> Result<(), String> {
    // SAFETY: as in `run_one`, for a `fn(A)`.
    let f: fn(A) = unsafe { std::mem::transmute::<usize, fn(A)>(func) };
    let a = crate::decode::from_bytes::<A>(arg).map_err(|e| format!("decoding the initializer's argument: {e}"))?;
    panic::catch_unwind(AssertUnwindSafe(|| f(a))).map_err(|p| {
        let loc = LAST_PANIC.with(|l| l.borrow_mut().take());
        match loc {
            Some(l) => format!("panicked at {l}: {}", payload_text(&*p)),
            None => format!("panicked: {}", payload_text(&*p)),
        }
    })
}

/// A little-endian reader over an untrusted frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    /// A reader of `buf` from byte `at`.
    pub(crate) fn at(buf: &'a [u8], at: usize) -> Self {
        Reader { buf, at }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.at)
    }
    /// Bytes read so far.
    pub(crate) fn position(&self) -> usize {
        self.at
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
    /// A `u32`-length-prefixed slice.
    pub(crate) fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

/// Starts a task frame in `out` (cleared) with a zero item count.
pub(crate) fn task_header(out: &mut Vec<u8>, chunk: u64, runner: i64, func: i64, sub: u32) {
    out.clear();
    out.extend_from_slice(&chunk.to_le_bytes());
    out.extend_from_slice(&runner.to_le_bytes());
    out.extend_from_slice(&func.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&sub.max(1).to_le_bytes());
}

/// A task frame holding items `from..to` of `frame` (a well-formed task
/// frame made by this process), under chunk id `id`.
pub(crate) fn slice_task(frame: &[u8], from: u32, to: u32, id: u64) -> Vec<u8> {
    let mut r = Reader::new(frame);
    let (_, runner, func, _, sub) = (r.u64(), r.i64(), r.i64(), r.u32(), r.u32());
    let mut out = Vec::new();
    task_header(&mut out, id, runner.unwrap_or(0), func.unwrap_or(0), sub.unwrap_or(1));
    let mut n = 0u32;
    for i in 0..to {
        let at = r.position();
        if read_arg(&mut r).is_none() {
            break;
        }
        if i >= from {
            out.extend_from_slice(&frame[at..r.position()]);
            n += 1;
        }
    }
    set_task_count(&mut out, n);
    out
}

/// Sets the item count of a task frame.
pub(crate) fn set_task_count(frame: &mut [u8], count: u32) {
    frame[24..28].copy_from_slice(&count.to_le_bytes());
}

/// Rewrites the chunk id of a task frame (a retried chunk gets a new id).
pub(crate) fn set_task_chunk(frame: &mut [u8], chunk: u64) {
    frame[0..8].copy_from_slice(&chunk.to_le_bytes());
}

/// Appends the header of a result frame (item count 0, no items) to `out`.
pub(crate) fn result_header(out: &mut Vec<u8>, chunk: u64, slot: u32, gen: u32, start: u32) {
    out.extend_from_slice(&chunk.to_le_bytes());
    out.extend_from_slice(&slot.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// The length of the result frame at the start of `buf` by its header (the
/// items themselves are checked when they are decoded), or `None` if its
/// header is cut short or its byte count runs past `buf`.
pub(crate) fn result_frame_len(buf: &[u8]) -> Option<usize> {
    let mut r = Reader::new(buf);
    r.bytes(24)?;
    let len = RESULT_HEADER.checked_add(r.u32()? as usize)?;
    (len <= buf.len()).then_some(len)
}

/// The bytes the first `count` items of a result frame's item area take, each
/// bounds-checked, or `None` if they do not all lie inside `items`.
pub(crate) fn items_len(items: &[u8], count: u32) -> Option<usize> {
    let mut r = Reader::new(items);
    for _ in 0..count {
        let _ = read_result(&mut r)?;
    }
    Some(r.position())
}

/// Sets the item count of a result frame, and its byte count to the bytes
/// after its header: call it on the whole frame.
pub(crate) fn set_result_count(frame: &mut [u8], count: u32) {
    let len = frame.len().saturating_sub(RESULT_HEADER) as u32;
    frame[20..24].copy_from_slice(&count.to_le_bytes());
    frame[24..28].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of `buf` by the plain reader, `read_result` or `read_arg`.
    fn by_reader(buf: &[u8], n: usize, results: bool) -> Vec<Option<String>> {
        let mut r = Reader::new(buf);
        (0..n)
            .map(|_| {
                if results {
                    read_result(&mut r).map(|i| format!("{i:?}"))
                } else {
                    read_arg(&mut r).map(|i| format!("{i:?}"))
                }
            })
            .collect()
    }

    fn by_items(buf: &[u8], n: usize, results: bool) -> Vec<Option<String>> {
        let mut it = Items::new(buf, 0);
        (0..n)
            .map(|_| {
                if results {
                    it.next_result().map(|i| format!("{i:?}"))
                } else {
                    it.next_arg().map(|i| format!("{i:?}"))
                }
            })
            .collect()
    }

    #[test]
    fn items_read_runs_of_one_kind_as_the_plain_reader_does() {
        let mut f = Vec::new();
        for v in [1u64, 2, 3] {
            push_ok(&mut f, &v);
        }
        push_ok(&mut f, &7u8);
        push_ok(&mut f, &-1i32);
        push_ok(&mut f, &-2i32);
        push_ok(&mut f, &Some(5u64));
        push_err(&mut f, &WireError::Panicked { message: "m".into(), location: None });
        push_ok(&mut f, &4u64);
        push_ok(&mut f, &5u64);
        // A run that changes kind without a tag change is impossible; a
        // hostile tag inside a run, and a cut last item, are refused alike.
        let mut hostile = f.clone();
        hostile.push(PLAIN + Kind::U64 as u8);
        hostile.extend_from_slice(&[1, 2, 3]);
        for buf in [&f, &hostile] {
            assert_eq!(by_items(buf, 12, true), by_reader(buf, 12, true));
        }
        let mut bad_kind = Vec::new();
        push_ok(&mut bad_kind, &1u16);
        bad_kind.push(PLAIN + 12);
        bad_kind.extend_from_slice(&[0; 8]);
        assert_eq!(by_items(&bad_kind, 2, true), by_reader(&bad_kind, 2, true));
        assert!(by_items(&bad_kind, 2, true)[1].is_none());

        let mut args = Vec::new();
        for v in [10u32, 11, 12] {
            push_arg(&mut args, &v).unwrap();
        }
        push_arg(&mut args, "text").unwrap();
        push_arg(&mut args, &13u32).unwrap();
        args.push(ERROR); // not an argument tag
        assert_eq!(by_items(&args, 7, false), by_reader(&args, 7, false));
        assert!(by_items(&args, 7, false)[5].is_none());
    }
}
