//! Shared layout of a pipe segment and the byte copies in and out of its rings.
//!
//! Each direction is a single-producer/single-consumer byte ring in the style of
//! Lamport's ring buffer, with the refinements of the "FastForward"/rigtorp
//! family: the producer's index (`tail`) and the consumer's index (`head`) live
//! on separate cache lines, each side keeps its own index in process-local
//! memory (the shared copy is only *published*, never read back), and each side
//! caches the other's index, reloading it only when the cached value says the
//! ring is full (producer) or empty (consumer).
//!
//! Indices are free-running `u64` byte counts (an honest stream never wraps
//! them: 2^64 bytes, but the starting values come from shared memory, so all
//! position arithmetic wraps). The byte at stream position `p` lives at
//! `data[p & (cap - 1)]`.
//!
//! A frame starts on a 64-byte boundary with an 8-byte header (tag and
//! length); a message under 1 KiB follows at once, a larger one starts on the
//! next cache line; the frame is padded to a multiple of 64 bytes.
//!
//! A frame of a message under 1 KiB that fits the ring with a line to spare
//! is *whole*: the producer
//! copies its body, zeroes the header word of the frame after it, and stores
//! its header last (tag [`FRAME_TAG_WHOLE`], release). The header word at the
//! producer's position is therefore zero until a frame is there (the
//! producer zeroes the header words of a window of free lines after the
//! frame, 4 KiB of them, in one go: those stores miss together once per
//! window instead of one miss in front of every publication), and a
//! consumer that finds the ring empty polls that word, on the line the frame
//! arrives in, instead of the producer's index line: a message costs one line
//! transfer rather than two in a row (the indices are still published, for
//! `poll`, the sleeper handshake and the producer's space accounting). The
//! same idea as the sequence word of a Vyukov/Disruptor slot or Aeron's
//! frame-length-written-last, for a byte ring. Any other frame has its header
//! (tag [`FRAME_TAG`]) written first and is read by `tail`: published at once
//! when it fits, streamed through in chunks otherwise. For a message of a
//! kilobyte or more the copy dwarfs a line transfer, and the 64 KiB stream
//! measured no better with the header written last.
//!
//! ## Rewinding
//!
//! A byte ring moves every frame to new lines, and a line the other side has
//! not touched for a while costs more to hand over than one passed back and
//! forth (measured on an AMD EPYC guest, two vCPUs close: a bare ring whose
//! small messages cycle through 512 bytes runs a round trip in 84 ns, through
//! 4 KiB in 110 ns, through 64 KiB or more in 150 ns, against 70 ns for two
//! atomics). So while the consumer keeps up, the producer keeps to the start
//! of the ring: once its offset in the ring reaches [`REWIND_AT`], it loads
//! the consumer's `head` (at most once every `REWIND_AT` bytes), and if
//! everything is consumed it zeroes the header word at the next lap's start,
//! writes a *skip frame* ([`FRAME_TAG_SKIP`], release) whose length runs to
//! that start, and puts its whole frame there. The consumer follows a skip
//! frame to its target (a valid one ends exactly at a lap start and leaves a
//! line free; two in a row are never written). The skipped bytes count as
//! used until the consumer passes them, so every accounting of free space
//! stays as it was; a frame follows a skip only where it fits before the
//! skip's own bytes (offset at least the frame plus a line). A consumer
//! that lags never sees a skip, and the ring works as before. The zeroing
//! window stops at `REWIND_AT` while rewinds happen.
//!
//! ## Why the header word is zeroed rather than tagged
//!
//! A header carrying bits of its own stream position (a lap tag) would need
//! no zeroing: a stale header of an earlier lap would not match. It is not
//! used, for two reasons:
//!
//! * Nothing to win. Measured with a bare ring (no library code, the same
//!   1 KiB rewind footprint, 15 alternated blocks, AMD EPYC guest with the
//!   vCPUs close), round trips relative to one fixed line per direction:
//!   the window zeroing above 0.98x [0.76-1.13], a lap-tagged header 1.25x
//!   [1.11-1.49], zeroing the next header in front of each publication
//!   1.44x [0.85-1.70]. The window's stores miss together, off the
//!   publication's path.
//! * Not sound as such. The word at a frame's start may hold message bytes
//!   of an earlier lap (any value the sender chose), and each rewind moves
//!   the stream position on by nearly a ring: the position bits that fit
//!   beside a tag and a length in one word repeat after about a minute of
//!   small round trips.
//!
//! ## Payload layout (offsets from the payload start)
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 64   | [`Control`]: magic, ring capacities, message limit            |
//! | 64     | 64   | [`EndSlot`] of end A                                          |
//! | 128    | 64   | [`EndSlot`] of end B                                          |
//! | 256    | 128  | ring 0 (A to B) producer line: `tail`                         |
//! | 384    | 128  | ring 0 consumer line: `head`                                  |
//! | 512    | 128  | ring 0 sleeper line: `rx_sleep`, `tx_sleep` (futex words)     |
//! | 640    | 384  | ring 1 (B to A): the same three lines                         |
//! | 1024   | cap0 | ring 0 data (absent, cap0 = 0, for a one-way pipe)            |
//! | 1024+cap0 | cap1 | ring 1 data                                                |
//! | 1024+cap0+cap1 | 512 | [`HolderTable`] of end A: 64 holder words             |
//! | 1536+cap0+cap1 | 512 | [`HolderTable`] of end B                              |
//!
//! Each ring line is padded to 128 bytes: Intel's adjacent-line prefetcher
//! fetches 64-byte lines in pairs, so 64-byte padding would still let the two
//! sides' lines interfere. The sleeper flags have a line of their own: each side loads the other's
//! flag after every publication, and that load hits in its own cache unless
//! the flag changed (a sleep), instead of missing on the line the other side
//! writes for every message.
//!
//! All-zero bytes are a valid state for every line except `Control`, which the
//! creator fills before it publishes the segment.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `b"PIPERING"` as a little-endian u64: the payload's own magic.
pub(crate) const PIPE_MAGIC: u64 = u64::from_le_bytes(*b"PIPERING");
/// Where the ring data starts in the payload.
pub(crate) const DATA_OFFSET: usize = 1024;
/// Smallest ring capacity accepted: the producer keeps one line free after
/// its data (where it zeroes the next header word), so a ring needs two.
pub(crate) const MIN_RING: u64 = 128;
/// Largest ring capacity accepted (1 TiB).
pub(crate) const MAX_RING: u64 = 1 << 40;

/// Frame header: the top 16 bits are a tag, the low 48 bits the message length.
pub(crate) const FRAME_TAG: u64 = 0xA55A;
/// Bits of the frame header that hold the length.
pub(crate) const LEN_BITS: u32 = 48;
/// Largest message length a frame header can express.
pub(crate) const MAX_FRAME_LEN: u64 = (1 << LEN_BITS) - 1;
/// Bytes of a frame header.
pub(crate) const FRAME_HEADER: u64 = 8;

/// Tag of a whole frame: its body was written before its header.
pub(crate) const FRAME_TAG_WHOLE: u64 = 0xA55B;

/// Tag of a skip frame: no message; its length is the bytes after its
/// header up to the start of the next lap of the ring (see "Rewinding").
pub(crate) const FRAME_TAG_SKIP: u64 = 0xA55C;

/// Ring offset from which a producer that finds the ring drained starts its
/// next whole frame at the start of the ring (see "Rewinding").
pub(crate) const REWIND_AT: u64 = 1024;

/// Encodes the header of a frame that streams (written before its body).
#[inline]
pub(crate) const fn frame_header(len: u64) -> u64 {
    (FRAME_TAG << LEN_BITS) | len
}

/// Encodes the header of a whole frame (written after its body).
#[inline]
pub(crate) const fn frame_header_whole(len: u64) -> u64 {
    (FRAME_TAG_WHOLE << LEN_BITS) | len
}

/// Encodes the header of a skip frame of `len` bytes after its header.
#[inline]
pub(crate) const fn frame_header_skip(len: u64) -> u64 {
    (FRAME_TAG_SKIP << LEN_BITS) | len
}

/// Where a skip frame at stream position `pos` with header length `len`
/// leads: the next lap's start, if it is a valid one (the skip ends exactly
/// at a lap start and leaves a line of the ring free); `None` otherwise.
#[inline]
pub(crate) fn skip_target(pos: u64, len: u64, cap: u64) -> Option<u64> {
    let size = FRAME_HEADER.checked_add(len)?;
    let to = pos.wrapping_add(size);
    (to & (cap - 1) == 0 && size + FRAME_ALIGN <= cap).then_some(to)
}

/// Frames start on a 64-byte boundary (one cache line).
pub(crate) const FRAME_ALIGN: u64 = 64;
/// Messages at least this long start on the cache line after their header, so
/// that bulk copies in and out are line-aligned on the ring side.
pub(crate) const ALIGNED_PAYLOAD_MIN: u64 = 1024;

/// The layout of one frame after its header: `skip` padding bytes, the
/// message, then padding up to the next 64-byte boundary; `body` counts all of
/// them (the frame is `FRAME_HEADER + body` bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameBody {
    pub(crate) skip: u64,
    pub(crate) body: u64,
}

impl FrameBody {
    /// The body layout of a message of `len` bytes (`len <= MAX_FRAME_LEN`).
    #[inline]
    pub(crate) const fn of(len: u64) -> FrameBody {
        let skip = if len >= ALIGNED_PAYLOAD_MIN { FRAME_ALIGN - FRAME_HEADER } else { 0 };
        let end = FRAME_HEADER + skip + len;
        let frame = (end + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1);
        FrameBody { skip, body: frame - FRAME_HEADER }
    }

    /// For body bytes `[at, at + n)`: where message bytes start within that
    /// range, which message byte that is, and how many message bytes it holds.
    #[inline]
    pub(crate) fn data_in(&self, len: u64, at: u64, n: u64) -> (u64, u64, u64) {
        let lo = at.max(self.skip);
        let hi = (at + n).min(self.skip + len);
        if hi <= lo {
            (0, 0, 0)
        } else {
            (lo - at, lo - self.skip, hi - lo)
        }
    }

    /// Message bytes contained in the first `got` body bytes.
    #[inline]
    pub(crate) fn data_upto(&self, len: u64, got: u64) -> u64 {
        got.saturating_sub(self.skip).min(len)
    }
}

/// Fixed configuration, written once by the creator.
#[repr(C, align(64))]
pub(crate) struct Control {
    pub(crate) magic: AtomicU64,
    /// Capacity of ring 0 (A to B) and ring 1 (B to A); 0 = absent.
    pub(crate) capacity: [AtomicU64; 2],
    /// Largest message, in bytes.
    pub(crate) max_message: AtomicU64,
}

/// Who holds one end: `word` = `pid << 32 | state`, and the holder's start time.
#[repr(C, align(64))]
pub(crate) struct EndSlot {
    pub(crate) word: AtomicU64,
    pub(crate) start_time: AtomicU64,
}

/// Bytes of the two holder tables after the ring data.
pub(crate) const HOLDER_TABLES: u64 = 2 * std::mem::size_of::<HolderTable>() as u64;
/// Entries in each end's holder table.
pub(crate) const HOLDERS: usize = 64;

/// Holder-entry states (top 4 bits of a holder word).
pub(crate) mod holder {
    /// Unused entry.
    pub(crate) const EMPTY: u64 = 0;
    /// Reserved by a forking parent until the child writes its own identity in
    /// its fork handler; carries the parent's pid and a monotonic millisecond
    /// stamp instead of a start time, and counts for one second at most.
    pub(crate) const PENDING: u64 = 1;
    /// A copy inherited over fork, not used yet by its holder.
    pub(crate) const INHERITED: u64 = 2;
    /// A copy its holder created, opened or used.
    pub(crate) const USED: u64 = 3;
    /// A hand-over ticket: the end was given up by `hand_over` for a process
    /// that will open it; counts while the giver lives, consumed by a claim.
    pub(crate) const TICKET: u64 = 4;

    /// Packs `state`, a pid and its start time in one word ([`crate::peer::word`]),
    /// so that a holder is written and read with one atomic access.
    #[inline]
    pub(crate) fn word(state: u64, pid: u32, start: u64) -> u64 {
        crate::peer::word::pack(state, pid, start)
    }

    /// `(state, pid, start)` of a holder word; any bits decode to some triple.
    #[inline]
    pub(crate) fn parts(w: u64) -> (u64, u32, u64) {
        crate::peer::word::parts(w)
    }
}

/// Every process holding a copy of one end, one atomic word each (see
/// [`holder`]); the pipe's holder count is the number of live entries.
#[repr(C, align(64))]
pub(crate) struct HolderTable {
    pub(crate) entries: [AtomicU64; HOLDERS],
}

/// The producer's line: written by the producer on every publication.
#[repr(C, align(128))]
pub(crate) struct ProducerLine {
    /// Bytes published so far (release-stored by the producer).
    pub(crate) tail: AtomicU64,
}

/// The consumer's line: written by the consumer as it frees space.
#[repr(C, align(128))]
pub(crate) struct ConsumerLine {
    /// Bytes consumed so far (release-stored by the consumer).
    pub(crate) head: AtomicU64,
}

/// The sleeper flags: written only around sleeps, read after every publication.
#[repr(C, align(128))]
pub(crate) struct SleepLine {
    /// Futex word: 1 while the consumer sleeps waiting for data.
    pub(crate) rx_sleep: AtomicU32,
    /// Futex word: 1 while the producer sleeps waiting for space.
    pub(crate) tx_sleep: AtomicU32,
}

/// The three lines of one ring.
#[repr(C)]
pub(crate) struct RingCtl {
    pub(crate) prod: ProducerLine,
    pub(crate) cons: ConsumerLine,
    pub(crate) sleep: SleepLine,
}

/// Everything before the ring data.
#[repr(C)]
pub(crate) struct Shared {
    pub(crate) control: Control,
    pub(crate) ends: [EndSlot; 2],
    pub(crate) rings: [RingCtl; 2],
}

const _: () = assert!(std::mem::size_of::<Control>() == 64);
const _: () = assert!(std::mem::size_of::<EndSlot>() == 64);
const _: () = assert!(std::mem::size_of::<RingCtl>() == 384);
const _: () = assert!(std::mem::offset_of!(Shared, ends) == 64);
const _: () = assert!(std::mem::offset_of!(Shared, rings) == 256);
const _: () = assert!(std::mem::size_of::<HolderTable>() == 512);
const _: () = assert!(std::mem::size_of::<Shared>() == 1024);
const _: () = assert!(std::mem::size_of::<Shared>() <= DATA_OFFSET);
const _: () = assert!(std::mem::align_of::<Shared>() == 128);

/// One ring as seen by one process: its control lines and its data, with a
/// capacity that was validated against the mapping when the pipe was opened.
#[derive(Clone, Copy)]
pub(crate) struct RingView {
    pub(crate) ctl: NonNull<RingCtl>,
    pub(crate) data: NonNull<u8>,
    /// A power of two between [`MIN_RING`] and [`MAX_RING`].
    pub(crate) cap: u64,
}

impl RingView {
    #[inline]
    pub(crate) fn ctl(&self) -> &RingCtl {
        // SAFETY: `ctl` points into the live mapping (the Connection owning
        // this view keeps the segment alive); RingCtl holds only atomics, so
        // any bytes a peer writes there are a valid value.
        unsafe { self.ctl.as_ref() }
    }

    #[inline]
    pub(crate) fn tail(&self) -> &AtomicU64 {
        &self.ctl().prod.tail
    }

    #[inline]
    pub(crate) fn head(&self) -> &AtomicU64 {
        &self.ctl().cons.head
    }

    #[inline]
    pub(crate) fn rx_sleep(&self) -> &AtomicU32 {
        &self.ctl().sleep.rx_sleep
    }

    #[inline]
    pub(crate) fn tx_sleep(&self) -> &AtomicU32 {
        &self.ctl().sleep.tx_sleep
    }

    /// Reads the 8-byte frame header at stream position `pos` (a multiple of 8).
    #[inline]
    pub(crate) fn read_header(&self, pos: u64) -> u64 {
        // A correct stream only names multiples of 8; a hostile index is
        // rounded down here rather than read misaligned.
        let off = (pos & (self.cap - 1) & !7) as usize;
        // Reading through an atomic keeps a concurrent (hostile) write from being a data race.
        // SAFETY: `off` is a multiple of 8 (masked) below `cap` (a power of two >= 64), so the 8 bytes are
        // in the ring, and the 64-byte-aligned data start makes the address AtomicU64-aligned.
        unsafe { (*(self.data.as_ptr().add(off) as *const AtomicU64)).load(Ordering::Relaxed) }
    }

    /// Reads the frame header at stream position `pos` with acquire ordering:
    /// a whole frame's body, written before its header, is visible after it.
    #[inline]
    pub(crate) fn read_header_acquire(&self, pos: u64) -> u64 {
        let off = (pos & (self.cap - 1) & !7) as usize;
        // SAFETY: as in `read_header`.
        unsafe { (*(self.data.as_ptr().add(off) as *const AtomicU64)).load(Ordering::Acquire) }
    }

    /// Writes a whole frame's header at stream position `pos` (release: after its body).
    #[inline]
    pub(crate) fn write_header_release(&self, pos: u64, h: u64) {
        let off = (pos & (self.cap - 1) & !7) as usize;
        // SAFETY: as in `read_header`.
        unsafe { (*(self.data.as_ptr().add(off) as *const AtomicU64)).store(h, Ordering::Release) }
    }

    /// Starts loading the cache line of stream position `pos` (where the
    /// next frame arrives) while the consumer polls the producer's index:
    /// when the index moves, the frame's line is already on its way, so a
    /// hand-over costs about one line transfer instead of two in a row.
    #[inline]
    pub(crate) fn prefetch(&self, pos: u64) {
        let off = (pos & (self.cap - 1)) as usize;
        // SAFETY: `off < cap`, so the address is inside the ring's data.
        crate::queue::ring::prefetch(unsafe { self.data.as_ptr().add(off) });
    }

    /// Writes a frame header at stream position `pos` (a multiple of 8).
    #[inline]
    pub(crate) fn write_header(&self, pos: u64, h: u64) {
        let off = (pos & (self.cap - 1) & !7) as usize;
        // SAFETY: as in `read_header`.
        unsafe { (*(self.data.as_ptr().add(off) as *const AtomicU64)).store(h, Ordering::Relaxed) }
    }

    /// Copies `n` bytes from `src` into the ring at stream position `pos`,
    /// wrapping around the end.
    ///
    /// # Safety
    /// `src` must be valid for reading `n` bytes, `n <= cap`, and the caller
    /// must be this ring's only producer with `[pos, pos + n)` free space.
    #[inline]
    pub(crate) unsafe fn copy_in(&self, pos: u64, src: *const u8, n: usize) {
        let off = (pos & (self.cap - 1)) as usize;
        let first = n.min(self.cap as usize - off);
        // SAFETY: off < cap and first <= cap - off, so [off, off + first) is in
        // the ring, and the rest (n - first <= cap - first) starts at 0. The
        // caller guarantees `src` and that no one else writes this space.
        unsafe {
            copy_bytes(src, self.data.as_ptr().add(off), first);
            if first < n {
                std::ptr::copy_nonoverlapping(src.add(first), self.data.as_ptr(), n - first);
            }
        }
    }

    /// Copies `n` bytes out of the ring at stream position `pos` into `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writing `n` bytes, `n <= cap`, and the caller
    /// must be this ring's only consumer with `[pos, pos + n)` published.
    #[inline]
    pub(crate) unsafe fn copy_out(&self, pos: u64, dst: *mut u8, n: usize) {
        let off = (pos & (self.cap - 1)) as usize;
        let first = n.min(self.cap as usize - off);
        // SAFETY: bounds as in `copy_in`; the caller guarantees `dst`.
        unsafe {
            copy_bytes(self.data.as_ptr().add(off), dst, first);
            if first < n {
                std::ptr::copy_nonoverlapping(self.data.as_ptr(), dst.add(first), n - first);
            }
        }
    }
}

/// Copies `n` bytes from `src` to `dst` (which do not overlap): up to 16
/// bytes with at most two pairs of unaligned word moves inline (a small
/// message's whole copy, where a call to `memcpy` costs more than the move),
/// more with `copy_nonoverlapping`.
///
/// # Safety
/// As for [`std::ptr::copy_nonoverlapping`]: `src` readable and `dst`
/// writable for `n` bytes, the two ranges disjoint.
#[inline(always)]
pub(super) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, n: usize) {
    if (8..=16).contains(&n) {
        // SAFETY: both words lie in `[0, n)` of their range (they overlap in
        // the middle when n < 16), which the caller guarantees readable
        // (`src`) and writable (`dst`); unaligned access is allowed.
        unsafe {
            let a = (src as *const u64).read_unaligned();
            let b = (src.add(n - 8) as *const u64).read_unaligned();
            (dst as *mut u64).write_unaligned(a);
            (dst.add(n - 8) as *mut u64).write_unaligned(b);
        }
    } else if (4..8).contains(&n) {
        // SAFETY: as above, with two 4-byte halves.
        unsafe {
            let a = (src as *const u32).read_unaligned();
            let b = (src.add(n - 4) as *const u32).read_unaligned();
            (dst as *mut u32).write_unaligned(a);
            (dst.add(n - 4) as *mut u32).write_unaligned(b);
        }
    } else {
        // SAFETY: the caller's guarantee is that of `copy_nonoverlapping`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    }
}
