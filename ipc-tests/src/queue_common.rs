//! Shared between the queue tests and the `queue_role` helper binary.

use bytemuck::{Pod, Zeroable};

/// A checksummed test message: 40 bytes, so a torn copy is detectable.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Msg {
    /// Producer id.
    pub producer: u32,
    /// Reserved.
    pub pad: u32,
    /// Per-producer sequence number.
    pub seq: u64,
    /// Derived from (producer, seq).
    pub a: u64,
    /// Derived from (producer, seq).
    pub b: u64,
    /// Checksum over everything above.
    pub check: u64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Msg {
    /// The message `seq` of `producer`.
    pub fn new(producer: u32, seq: u64) -> Msg {
        let a = mix(((producer as u64) << 40) ^ seq);
        let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
        let mut m = Msg { producer, pad: 0, seq, a, b, check: 0 };
        m.check = m.sum();
        m
    }
    fn sum(&self) -> u64 {
        mix(self.producer as u64 ^ mix(self.seq ^ mix(self.a ^ mix(self.b))))
    }
    /// Whether every field is consistent (not torn, not scribbled).
    pub fn valid(&self) -> bool {
        *self == Msg::new(self.producer, self.seq)
    }
}

/// A unique test segment name.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
