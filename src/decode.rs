//! Decoding postcard bytes that another process wrote, with a bound on how
//! deeply values nest.
//!
//! postcard (like serde's derived impls) decodes a nested value by
//! recursion, one native stack frame or more per level, and sets no limit.
//! A recursive type (`enum Expr { Lit(i64), Neg(Box<Expr>) }`) lets one
//! input byte open one more level, so a hostile writer of a queue slot, a
//! pipe message or a manager request could overflow the receiver's stack:
//! an abort, not an `Err`. [`from_bytes`] and [`take_from_bytes`] wrap
//! postcard's deserializer in an adapter that counts the containers it is
//! inside (a sequence, tuple or struct, a map, an enum, an option's or a
//! newtype's content: every way a value can hold another) and fails past
//! [`MAX_DEPTH`] = 512 (`serde_json` stops at 128 arrays and objects; this
//! counts more kinds of container, so it allows more). It counts per
//! container, not per element, so a long flat sequence pays nothing per
//! element for the count. Values nest that deeply only when they are
//! recursive structures (a linked list as `Option<Box<Node>>` spends two or
//! three levels per node), which are better sent flat (a `Vec` of nodes).
//! The sender does not check: such a value is sent, and its receiver gets a
//! decode error.
//!
//! Stack: a level costs about 700 bytes in a debug build (a 2 MiB thread
//! overflowed between 2,048 and 3,072 levels), less in release, so 512
//! levels stay far below a thread's stack.
//!
//! The adapter forwards every call unchanged otherwise (the pattern of a
//! serde "deserializer adapter": a wrapper for the deserializer, its
//! visitors, seeds and access objects).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// Most levels a decoded value may nest.
pub(crate) const MAX_DEPTH: u32 = 512;

/// `postcard::from_bytes`, with at most [`MAX_DEPTH`] levels of nesting.
pub(crate) fn from_bytes<'a, T: de::Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<T> {
    let (value, rest) = take_from_bytes(bytes)?;
    let _ = rest;
    Ok(value)
}

/// `postcard::take_from_bytes`, with at most [`MAX_DEPTH`] levels of nesting.
pub(crate) fn take_from_bytes<'a, T: de::Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<(T, &'a [u8])> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let budget = Cell::new(MAX_DEPTH);
    let value = T::deserialize(Limited { inner: &mut de, budget: &budget })?;
    Ok((value, de.finalize()?))
}

/// The message of the error past [`MAX_DEPTH`].
const TOO_DEEP: &str = "the value nests more than 512 levels deep";

/// One level entered: gives the level back when dropped.
struct Level<'b>(&'b Cell<u32>);

impl<'b> Level<'b> {
    #[inline]
    fn enter<E: de::Error>(budget: &'b Cell<u32>) -> Result<Level<'b>, E> {
        match budget.get().checked_sub(1) {
            Some(left) => {
                budget.set(left);
                Ok(Level(budget))
            }
            None => Err(E::custom(TOO_DEEP)),
        }
    }
}

impl Drop for Level<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// The deserializer, its visitors, seeds and access objects, each wrapped
/// with the shared level budget.
struct Limited<'b, X> {
    inner: X,
    budget: &'b Cell<u32>,
}

impl<'b, X> Limited<'b, X> {
    #[inline]
    fn wrap<Y>(&self, inner: Y) -> Limited<'b, Y> {
        Limited { inner, budget: self.budget }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let v = self.wrap(visitor);
            self.inner.$method(v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_unit_struct(name, v)
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_newtype_struct(name, v)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_tuple(len, v)
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_tuple_struct(name, len, v)
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_struct(name, fields, v)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_enum(name, variants, v)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A seed (a sequence element, a map key or value, a variant's body): its
/// deserializer is wrapped too, so that containers inside it count.
impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Limited<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        let d = self.wrap(deserializer);
        self.inner.deserialize(d)
    }
}

macro_rules! forward_visit {
    ($($method:ident($t:ty)),* $(,)?) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $t) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Limited<'_, V> {
    type Value = V::Value;

    #[inline]
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let _level = Level::enter(self.budget)?;
        let d = self.wrap(deserializer);
        self.inner.visit_some(d)
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let _level = Level::enter(self.budget)?;
        let d = self.wrap(deserializer);
        self.inner.visit_newtype_struct(d)
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let _level = Level::enter(self.budget)?;
        let s = self.wrap(seq);
        self.inner.visit_seq(s)
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let _level = Level::enter(self.budget)?;
        let m = self.wrap(map);
        self.inner.visit_map(m)
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let _level = Level::enter(self.budget)?;
        let e = self.wrap(data);
        self.inner.visit_enum(e)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let s = self.wrap(seed);
        self.inner.next_element_seed(s)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let s = self.wrap(seed);
        self.inner.next_key_seed(s)
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let s = self.wrap(seed);
        self.inner.next_value_seed(s)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Limited<'b, A> {
    type Error = A::Error;
    type Variant = Limited<'b, A::Variant>;

    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((value, Limited { inner: variant, budget }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let s = self.wrap(seed);
        self.inner.newtype_variant_seed(s)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let v = self.wrap(visitor);
        self.inner.tuple_variant(len, v)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let v = self.wrap(visitor);
        self.inner.struct_variant(fields, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Expr {
        Lit(i64),
        Neg(Box<Expr>),
        Pair { a: Box<Expr>, b: Option<Box<Expr>> },
    }

    fn nested(n: usize) -> Expr {
        (0..n).fold(Expr::Lit(7), |e, _| Expr::Neg(Box::new(e)))
    }

    /// Values within the limit decode as postcard decodes them; the
    /// adapter changes nothing else (sequences, maps, strings, options,
    /// struct variants, trailing bytes).
    #[test]
    fn decodes_what_postcard_decodes() {
        let e = Expr::Pair { a: Box::new(nested(50)), b: Some(Box::new(Expr::Lit(-1))) };
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(from_bytes::<Expr>(&bytes).unwrap(), e);
        type Mixed = (Vec<String>, std::collections::BTreeMap<u32, Vec<u8>>, Option<(char, f64)>, [u16; 3]);
        let m: Mixed = (vec!["a".into(), "bc".into()], [(1, vec![2, 3])].into(), Some(('x', 1.5)), [4, 5, 6]);
        let mut bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(from_bytes::<Mixed>(&bytes).unwrap(), m);
        bytes.extend_from_slice(&[9, 9]);
        let (back, rest) = take_from_bytes::<Mixed>(&bytes).unwrap();
        assert_eq!((back, rest), (m, &[9u8, 9][..]));
        // Many siblings are not depth: a long flat sequence decodes.
        let flat: Vec<Option<u8>> = vec![Some(1); 10_000];
        assert_eq!(from_bytes::<Vec<Option<u8>>>(&postcard::to_allocvec(&flat).unwrap()).unwrap(), flat);
    }

    /// A linked list as a user might write it spends three levels per node
    /// (newtype, option, tuple): 150 nodes still decode (review of the
    /// first limit, 128, which refused 43).
    #[test]
    fn a_linked_list_of_150_nodes_decodes() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct List(Option<Box<(u64, List)>>);
        let list = (0..150).fold(List(None), |l, i| List(Some(Box::new((i, l)))));
        let bytes = postcard::to_allocvec(&list).unwrap();
        assert_eq!(from_bytes::<List>(&bytes).unwrap(), list);
    }

    /// A hostile writer's deeply nested input (one byte per level: the
    /// variant index of `Neg`) is an error, not a stack overflow: 1 MiB of
    /// it would take a million frames. Without the limit this test aborts
    /// the test binary.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut hostile = vec![1u8; 1 << 20];
        hostile.extend_from_slice(&[0, 14]);
        let e = from_bytes::<Expr>(&hostile).unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e:?}");
        // At the limit it still decodes.
        let ok = postcard::to_allocvec(&nested(MAX_DEPTH as usize - 1)).unwrap();
        assert!(from_bytes::<Expr>(&ok).is_ok());
        let too_deep = postcard::to_allocvec(&nested(MAX_DEPTH as usize + 1)).unwrap();
        assert!(from_bytes::<Expr>(&too_deep).is_err());
    }
}
