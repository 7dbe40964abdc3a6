//! The plain lane: arguments and results that are one bare primitive
//! (`u64`, `i32`, `f64`, `bool`, `char`, ...) travel as their fixed-width
//! little-endian bytes instead of postcard's varints behind a length prefix.
//!
//! Most `map`s of small tasks move numbers. For those, postcard and the
//! item framing around it were most of the pool's cost per item: a trivial
//! `map(|x| x * x)` spent more time encoding and decoding than in the pool's
//! queues. The lane is chosen per value, at run time, through serde itself:
//! [`encode`] serializes the value into a probe that accepts exactly one
//! primitive and refuses everything else (a struct, an `Option`, a newtype, a
//! string...), which then takes the postcard path. No trait to implement, no
//! change to what a task may take or return.
//!
//! Decoding is self-describing: the item's tag names its [`Kind`], and
//! [`decode`] hands the value to the type's `Deserialize` through
//! `deserialize_any`, as a self-describing format (JSON) does; serde's
//! primitive visitors accept any primitive that fits (a `u32` result read
//! back as `u64`, say), and refuse, with an error, one that does not.
//!
//! Every kind and width read from a frame is checked: an unknown kind, a
//! short item, a `bool` other than 0 or 1 or a `char` that is not a Unicode
//! scalar value is an error for that item.

use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Impossible, Serialize};

/// The primitive a plain item holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Bool = 0,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Char,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Bool,
        Kind::U8,
        Kind::U16,
        Kind::U32,
        Kind::U64,
        Kind::I8,
        Kind::I16,
        Kind::I32,
        Kind::I64,
        Kind::F32,
        Kind::F64,
        Kind::Char,
    ];

    /// The kind with code `b`, if any.
    #[inline]
    pub(crate) fn from_code(b: u8) -> Option<Kind> {
        Kind::ALL.get(b as usize).copied()
    }

    /// Bytes of the value (a table: this is on every item's path).
    #[inline]
    pub(crate) fn width(self) -> usize {
        const WIDTH: [u8; 12] = [1, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 4];
        WIDTH[self as usize] as usize
    }
}

/// A plain value: its kind and its bits, zero-extended to 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plain {
    pub(crate) kind: Kind,
    pub(crate) bits: u64,
}

/// `v` as a plain value, if it is one bare primitive.
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Option<Plain> {
    v.serialize(Probe).ok()
}

/// Appends `tag` and the value's `width` little-endian bytes to `out`.
#[inline]
pub(crate) fn push(out: &mut Vec<u8>, tag: u8, p: Plain) {
    let len = out.len();
    out.reserve(9);
    // SAFETY: `reserve` made room for 9 bytes after `len`: the tag and an
    // unaligned 8-byte store, of which the first `width` bytes are counted
    // (little endian: the value's own bytes come first).
    unsafe {
        let at = out.as_mut_ptr().add(len);
        *at = tag;
        std::ptr::write_unaligned(at.add(1).cast::<u64>(), p.bits.to_le());
        out.set_len(len + 1 + p.kind.width());
    }
}

/// Reads a `T` out of the `bytes` of a plain item of kind `kind`.
///
/// One dispatch on the kind; each arm hands its value to `T` through a
/// deserializer of that one type ([`One`]), so that for a `T` of the same
/// type the whole decode is a load.
#[inline]
pub(crate) fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, Error> {
    fn le<const N: usize>(kind: Kind, bytes: &[u8]) -> Result<[u8; N], Error> {
        bytes.try_into().map_err(|_| wrong_width(kind, bytes.len()))
    }
    match kind {
        Kind::U64 => T::deserialize(One(u64::from_le_bytes(le(kind, bytes)?))),
        Kind::I64 => T::deserialize(One(i64::from_le_bytes(le(kind, bytes)?))),
        Kind::F64 => T::deserialize(One(f64::from_le_bytes(le(kind, bytes)?))),
        Kind::U32 => T::deserialize(One(u32::from_le_bytes(le(kind, bytes)?))),
        Kind::I32 => T::deserialize(One(i32::from_le_bytes(le(kind, bytes)?))),
        Kind::F32 => T::deserialize(One(f32::from_le_bytes(le(kind, bytes)?))),
        Kind::U16 => T::deserialize(One(u16::from_le_bytes(le(kind, bytes)?))),
        Kind::I16 => T::deserialize(One(i16::from_le_bytes(le(kind, bytes)?))),
        Kind::U8 => T::deserialize(One(u8::from_le_bytes(le(kind, bytes)?))),
        Kind::I8 => T::deserialize(One(i8::from_le_bytes(le(kind, bytes)?))),
        Kind::Bool => match le::<1>(kind, bytes)? {
            [0] => T::deserialize(One(false)),
            [1] => T::deserialize(One(true)),
            [b] => Err(Error(format!("a bool item holding {b}"))),
        },
        Kind::Char => {
            let v = u32::from_le_bytes(le(kind, bytes)?);
            match char::from_u32(v) {
                Some(c) => T::deserialize(One(c)),
                None => Err(Error(format!("a char item holding {v:#x}"))),
            }
        }
    }
}

/// Decodes a run of plain items of kind `kind` straight into `out`: items
/// of `1 + width` bytes each from the start of `buf` (the tag `PLAIN + kind`
/// first, then the value), at most `max` of them. Returns how many it
/// decoded; it stops before the first item that is not of this kind, is
/// cut short, or does not decode as a `T` (the general path then reads that
/// item again and names its error).
///
/// One dispatch on the kind per run, then a loop monomorphised for the pair
/// of types: for a `T` of the kind's own type each item is a compare, a load
/// and a store (a `map` of numbers spends most of the caller's time here).
#[inline]
pub(crate) fn decode_run<T: DeserializeOwned>(kind: Kind, buf: &[u8], max: usize, out: &mut Vec<T>) -> usize {
    #[inline(always)]
    fn run<T: DeserializeOwned, P: Visit, const N: usize>(
        tag: u8,
        buf: &[u8],
        max: usize,
        out: &mut Vec<T>,
        conv: impl Fn([u8; N]) -> Option<P>,
    ) -> usize {
        let mut n = 0;
        out.reserve(max.min(buf.len() / (N + 1)));
        for item in buf.chunks_exact(N + 1).take(max) {
            let (t, rest) = (item[0], &item[1..]);
            if t != tag {
                break;
            }
            let mut le = [0u8; N];
            le.copy_from_slice(rest);
            let Some(p) = conv(le) else { break };
            match T::deserialize(One(p)) {
                Ok(v) => out.push(v),
                Err(_) => break,
            }
            n += 1;
        }
        n
    }
    let tag = super::wire::PLAIN + kind as u8;
    match kind {
        Kind::U64 => run(tag, buf, max, out, |b| Some(u64::from_le_bytes(b))),
        Kind::I64 => run(tag, buf, max, out, |b| Some(i64::from_le_bytes(b))),
        Kind::F64 => run(tag, buf, max, out, |b| Some(f64::from_le_bytes(b))),
        Kind::U32 => run(tag, buf, max, out, |b| Some(u32::from_le_bytes(b))),
        Kind::I32 => run(tag, buf, max, out, |b| Some(i32::from_le_bytes(b))),
        Kind::F32 => run(tag, buf, max, out, |b| Some(f32::from_le_bytes(b))),
        Kind::U16 => run(tag, buf, max, out, |b| Some(u16::from_le_bytes(b))),
        Kind::I16 => run(tag, buf, max, out, |b| Some(i16::from_le_bytes(b))),
        Kind::U8 => run(tag, buf, max, out, |b| Some(u8::from_le_bytes(b))),
        Kind::I8 => run(tag, buf, max, out, |b| Some(i8::from_le_bytes(b))),
        Kind::Bool => run(tag, buf, max, out, |[b]: [u8; 1]| (b <= 1).then_some(b == 1)),
        Kind::Char => run(tag, buf, max, out, |b| char::from_u32(u32::from_le_bytes(b))),
    }
}

#[cold]
fn wrong_width(kind: Kind, len: usize) -> Error {
    Error(format!("a {kind:?} item of {len} bytes"))
}

/// Why a value is not plain, or a plain item did not decode.
#[derive(Debug)]
pub(crate) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

/// The probe serializer: one primitive, or an error (cheap: no message).
struct Probe;

fn not_plain<T>() -> Result<T, Error> {
    Err(Error(String::new()))
}

macro_rules! plain_ser {
    ($($method:ident: $t:ty => $kind:ident, |$v:ident| $bits:expr;)*) => {
        $(
            #[inline]
            fn $method(self, $v: $t) -> Result<Plain, Error> {
                Ok(Plain { kind: Kind::$kind, bits: $bits })
            }
        )*
    };
}

impl ser::Serializer for Probe {
    type Ok = Plain;
    type Error = Error;
    type SerializeSeq = Impossible<Plain, Error>;
    type SerializeTuple = Impossible<Plain, Error>;
    type SerializeTupleStruct = Impossible<Plain, Error>;
    type SerializeTupleVariant = Impossible<Plain, Error>;
    type SerializeMap = Impossible<Plain, Error>;
    type SerializeStruct = Impossible<Plain, Error>;
    type SerializeStructVariant = Impossible<Plain, Error>;

    plain_ser! {
        serialize_bool: bool => Bool, |v| u64::from(v);
        serialize_u8: u8 => U8, |v| u64::from(v);
        serialize_u16: u16 => U16, |v| u64::from(v);
        serialize_u32: u32 => U32, |v| u64::from(v);
        serialize_u64: u64 => U64, |v| v;
        serialize_i8: i8 => I8, |v| u64::from(v as u8);
        serialize_i16: i16 => I16, |v| u64::from(v as u16);
        serialize_i32: i32 => I32, |v| u64::from(v as u32);
        serialize_i64: i64 => I64, |v| v as u64;
        serialize_f32: f32 => F32, |v| u64::from(v.to_bits());
        serialize_f64: f64 => F64, |v| v.to_bits();
        serialize_char: char => Char, |v| u64::from(u32::from(v));
    }

    fn serialize_str(self, _: &str) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_none(self) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_unit(self) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Plain, Error> {
        not_plain()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        not_plain()
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        not_plain()
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        not_plain()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        not_plain()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        not_plain()
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        not_plain()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        not_plain()
    }
    fn is_human_readable(&self) -> bool {
        // As postcard: a type that serializes differently for humans (a
        // timestamp as a string, say) gives its compact form, as there.
        false
    }
}

/// A primitive that a visitor takes by its own method.
trait Visit: Copy {
    fn visit<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error>;
}

macro_rules! visit {
    ($($t:ty => $m:ident),* $(,)?) => {
        $(impl Visit for $t {
            #[inline(always)]
            fn visit<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
                v.$m(self)
            }
        })*
    };
}

visit! {
    bool => visit_bool, u8 => visit_u8, u16 => visit_u16, u32 => visit_u32, u64 => visit_u64,
    i8 => visit_i8, i16 => visit_i16, i32 => visit_i32, i64 => visit_i64,
    f32 => visit_f32, f64 => visit_f64, char => visit_char,
}

/// The deserializer of one plain value: every request is answered with the
/// value's own type (`deserialize_any`), as a self-describing format does.
struct One<P>(P);

impl<'de, P: Visit> de::Deserializer<'de> for One<P> {
    type Error = Error;

    #[inline(always)]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.visit(visitor)
    }

    /// As self-describing formats do: a newtype around a primitive takes
    /// the primitive (a type that serializes as its bare inner value but
    /// deserializes as a newtype decodes as it would from postcard).
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items of `vals` (kind, bits) one after another, as a frame holds them.
    fn run_bytes(vals: &[(Kind, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(kind, bits) in vals {
            push(&mut out, super::super::wire::PLAIN + kind as u8, Plain { kind, bits });
        }
        out
    }

    #[test]
    fn decode_run_stops_where_the_general_path_must_take_over() {
        use Kind::*;
        // A run of one kind, then another kind: only the first run.
        let b = run_bytes(&[(U64, 1), (U64, 2), (U64, 3), (U32, 4)]);
        let mut out: Vec<u64> = Vec::new();
        assert_eq!(decode_run(U64, &b, 10, &mut out), 3);
        assert_eq!(out, [1, 2, 3]);
        // At most `max`.
        out.clear();
        assert_eq!(decode_run(U64, &b, 2, &mut out), 2);
        assert_eq!(out, [1, 2]);
        // A value that does not fit the target type stops before it.
        let b = run_bytes(&[(U32, 7), (U32, 300), (U32, 8)]);
        let mut small: Vec<u8> = Vec::new();
        assert_eq!(decode_run(U32, &b, 10, &mut small), 1);
        assert_eq!(small, [7]);
        // Invalid bools and chars, and an item cut short.
        let mut b = run_bytes(&[(Bool, 1), (Bool, 0), (Bool, 2)]);
        let mut flags: Vec<bool> = Vec::new();
        assert_eq!(decode_run(Bool, &b, 10, &mut flags), 2);
        assert_eq!(flags, [true, false]);
        let c = run_bytes(&[(Char, 'x' as u64), (Char, 0xd800)]);
        let mut chars: Vec<char> = Vec::new();
        assert_eq!(decode_run(Char, &c, 10, &mut chars), 1);
        b.truncate(3);
        flags.clear();
        assert_eq!(decode_run(Bool, &b, 10, &mut flags), 1, "the second item lacks its value byte");
        // Widening, as the general decoder does: a u32 item read as u64.
        let b = run_bytes(&[(U32, 5), (U32, 6)]);
        out.clear();
        assert_eq!(decode_run(U32, &b, 10, &mut out), 2);
        assert_eq!(out, [5, 6]);
        // Each decoded item equals what `decode` gives for it.
        let b = run_bytes(&[(I16, (-3i16) as u16 as u64), (I16, 9)]);
        let mut ints: Vec<i64> = Vec::new();
        assert_eq!(decode_run(I16, &b, 10, &mut ints), 2);
        assert_eq!(ints, [decode::<i64>(I16, &b[1..3]).unwrap(), 9]);
    }

    fn round<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(v: T, kind: Kind) {
        let p = encode(&v).unwrap_or_else(|| panic!("{v:?} is plain"));
        assert_eq!(p.kind, kind);
        let mut out = vec![7u8];
        push(&mut out, 16, p);
        assert_eq!(out.len(), 2 + kind.width());
        assert_eq!(out[1], 16);
        let back: T = decode(kind, &out[2..]).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn every_primitive_round_trips_at_its_width() {
        round(true, Kind::Bool);
        round(false, Kind::Bool);
        round(0xabu8, Kind::U8);
        round(0xabcdu16, Kind::U16);
        round(0xdead_beefu32, Kind::U32);
        round(u64::MAX - 5, Kind::U64);
        round(-5i8, Kind::I8);
        round(i16::MIN, Kind::I16);
        round(-123_456i32, Kind::I32);
        round(i64::MIN + 1, Kind::I64);
        round(-1.5f32, Kind::F32);
        round(std::f64::consts::PI, Kind::F64);
        round('é', Kind::Char);
        assert!(decode::<f64>(Kind::F64, &f64::NAN.to_bits().to_le_bytes()).unwrap().is_nan());
    }

    #[test]
    fn anything_but_one_bare_primitive_is_not_plain() {
        assert!(encode(&Some(1u64)).is_none());
        assert!(encode(&(1u64, 2u64)).is_none());
        assert!(encode("text").is_none());
        assert!(encode(&()).is_none());
        assert!(encode(&vec![1u8]).is_none());
        assert!(encode(&1u128).is_none());
        #[derive(serde::Serialize)]
        struct Id(u64);
        assert!(encode(&Id(3)).is_none());
    }

    #[test]
    fn a_fitting_primitive_is_accepted_and_anything_else_is_an_error() {
        // A u32 result read back as u64, and the reverse when it fits.
        assert_eq!(decode::<u64>(Kind::U32, &7u32.to_le_bytes()).unwrap(), 7);
        assert_eq!(decode::<u32>(Kind::U64, &7u64.to_le_bytes()).unwrap(), 7);
        assert!(decode::<u32>(Kind::U64, &(1u64 << 40).to_le_bytes()).is_err());
        assert!(decode::<String>(Kind::U64, &7u64.to_le_bytes()).is_err());
        assert!(decode::<Option<u64>>(Kind::U64, &7u64.to_le_bytes()).is_err());
        // A newtype read from its bare inner value.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Meters(u64);
        assert_eq!(decode::<Meters>(Kind::U64, &7u64.to_le_bytes()).unwrap(), Meters(7));
        // Hostile bytes: a wrong width, a bool of 2, a surrogate char.
        assert!(decode::<u64>(Kind::U64, &[1, 2, 3]).is_err());
        assert!(decode::<bool>(Kind::Bool, &[2]).is_err());
        assert!(decode::<char>(Kind::Char, &0xd800u32.to_le_bytes()).is_err());
        assert_eq!(Kind::from_code(11), Some(Kind::Char));
        assert_eq!(Kind::from_code(12), None);
    }
}
