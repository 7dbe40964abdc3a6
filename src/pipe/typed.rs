//! Typed messages on a [`Connection`]: [`Connection::send_value`] puts the
//! value's 8-byte type fingerprint ([`crate::queue::fingerprint_of`]) before
//! its postcard encoding, and [`Connection::recv_value`] checks it, so that
//! receiving a message as another type is [`RecvError::TypeMismatch`], never a
//! silent misdecode. A thin layer over `send_bytes` / `recv_bytes`; the
//! untyped [`Connection::send`] / [`Connection::recv`] stay as they are (and
//! do not interoperate with the typed calls).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::{pipe::RecvError, Pipe};
//! let (a, b) = Pipe::new()?;
//! a.send_value(&"eight ch".to_string())?;
//! assert!(matches!(b.recv_value::<u64>(), Err(RecvError::TypeMismatch { .. })));
//! a.send_value(&7u64)?;
//! assert_eq!(b.recv_value::<u64>()?, 7);
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Connection, RecvError, SendError};
use crate::queue::fingerprint_of;
use crate::queue::typed::{decode, with_frame, TypedRecvError};

impl Connection {
    /// Sends `value` as a typed message (its type fingerprint, then its
    /// postcard encoding); receive it with [`recv_value`](Self::recv_value).
    pub fn send_value<T: Serialize>(&self, value: &T) -> Result<(), SendError> {
        with_frame(fingerprint_of::<T>(), value, |frame| self.send_bytes(frame)).map_err(SendError::Serialize)?
    }

    /// Receives a message sent with [`send_value`](Self::send_value) as a `T`:
    /// [`RecvError::TypeMismatch`] if it was sent as another type (the message
    /// is consumed).
    pub fn recv_value<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        typed(self.recv_bytes()?)
    }

    /// [`recv_value`](Self::recv_value) with a timeout.
    pub fn recv_value_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvError> {
        typed(self.recv_bytes_timeout(timeout)?)
    }
}

fn typed<T: DeserializeOwned>(frame: Vec<u8>) -> Result<T, RecvError> {
    decode(fingerprint_of::<T>(), &frame).map_err(|e| match e {
        TypedRecvError::TypeMismatch { expected, found } => RecvError::TypeMismatch { expected, found },
        TypedRecvError::Decode(e) => RecvError::Deserialize(e),
        _ => RecvError::Corrupt { reason: "typed message" },
    })
}

#[cfg(test)]
mod tests {
    use crate::pipe::RecvError;
    use crate::queue::fingerprint_of;
    use crate::Pipe;

    /// Regression (issue 10 item 3): `recv::<u64>()` of a `String` message
    /// returned `Ok(8)`.
    #[test]
    fn wrong_type_value_is_type_mismatch() {
        let (a, b) = Pipe::new().unwrap();
        a.send_value(&"eight ch".to_string()).unwrap();
        match b.recv_value::<u64>() {
            Err(RecvError::TypeMismatch { expected, found }) => {
                assert_eq!((expected, found), (fingerprint_of::<u64>(), fingerprint_of::<String>()))
            }
            other => panic!("expected TypeMismatch, got {other:?}"),
        }
        a.send_value(&vec![3u8; 5000]).unwrap(); // over the stack buffer
        assert_eq!(b.recv_value::<Vec<u8>>().unwrap(), vec![3u8; 5000]);
        a.send_bytes(b"x").unwrap();
        assert!(matches!(b.recv_value::<u8>(), Err(RecvError::TypeMismatch { found: 0, .. })));
        b.send_value(&(1u32, "two".to_string())).unwrap();
        assert_eq!(a.recv_value::<(u32, String)>().unwrap(), (1, "two".to_string()));
    }
}
