//! The request/response messages between proxies and the server (postcard).
//! Values travel as postcard bytes: the server never decodes them except
//! inside a registered function.

use serde::{Deserialize, Serialize};

/// Kinds of managed objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Namespace,
    Value,
    Queue,
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
}

/// A timeout in microseconds; `None`: wait forever; `Some(0)`: do not wait.
pub(crate) type Micros = Option<u64>;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// First message on a local (Unix) connection: `true` asks for a
    /// shared-memory pipe to carry the rest.
    Hello { pipe: bool },
    /// The client has claimed its end of the pipe.
    Claimed,
    /// Creates an object; `n`: the semaphore value, barrier parties or queue
    /// bound; `init`: the first value. With a `name`, an object of that name
    /// (same kind and type) is returned if it exists.
    Create { kind: Kind, fp: u64, n: u64, init: Vec<u8>, name: Option<String> },
    /// Calls an operation on object `id`, whose type fingerprint must be `fp`.
    Call { id: u64, fp: u64, op: Op },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Len,
    Clear,
    /// Dict: the items; list/queue: the items; namespace: (name, fp, value) pairs.
    Snapshot,
    Get(Vec<u8>),
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Contains(Vec<u8>),
    Keys,
    ExtendPairs(Vec<(Vec<u8>, Vec<u8>)>),
    ExtendItems(Vec<Vec<u8>>),
    /// Read-modify-write with a registered function on the dict entry `key`
    /// (or the value when `None`). `fp` fingerprints the function's types.
    Apply {
        key: Option<Vec<u8>>,
        func: String,
        fp: u64,
        arg: Vec<u8>,
    },
    Push(Vec<u8>),
    Pop,
    Index(u64),
    SetIndex(u64, Vec<u8>),
    Load,
    Store(Vec<u8>),
    GetAttr(String, u64),
    SetAttr(String, u64, Vec<u8>),
    DelAttr(String),
    Put(Vec<u8>, Micros),
    Take(Micros),
    Acquire(Micros),
    Release,
    SetFlag,
    ClearFlag,
    IsSet,
    WaitFlag(Micros),
    Wait(Micros),
    Notify(u64),
    BarrierWait(Micros),
    Abort,
}

/// What went wrong on the server side of one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fault {
    NoSuchObject,
    TypeMismatch,
    WrongKind,
    Timeout,
    NotOwner,
    Empty,
    Full,
    IndexOutOfRange,
    Broken,
    UnknownFunction(String),
    Function(String),
    TooMany,
    /// The request or its reply was longer than the message limit.
    TooLarge {
        len: u64,
        limit: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Unit,
    Id(u64),
    Bytes(Vec<u8>),
    Maybe(Option<Vec<u8>>),
    Bool(bool),
    Num(u64),
    Items(Vec<Vec<u8>>),
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    Fields(Vec<(String, u64, Vec<u8>)>),
    Fault(Fault),
}
