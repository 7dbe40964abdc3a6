//! Queue errors: one small enum per operation; sends hand the value back.

use std::fmt;

macro_rules! value_error {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $var:ident => $msg:expr,)* }) => {
        $(#[$doc])*
        #[derive(PartialEq, Eq, Clone, Copy)]
        pub enum $name<T> {
            $($(#[$vdoc])* $var(T),)*
        }

        impl<T> $name<T> {
            /// The value that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $($name::$var(v) => v,)*
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str(concat!(stringify!($var), "(..)")),)*
                }
            }
        }

        impl<T> fmt::Display for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str($msg),)*
                }
            }
        }

        impl<T> std::error::Error for $name<T> {}
    };
}

const DISCONNECTED_TX: &str = "every receiver of the queue is gone";
const CORRUPT: &str = "the queue's shared memory holds values no valid queue can hold, or its segment was truncated";

value_error!(
    /// Why [`Queue::try_send`](crate::Queue::try_send) did not send; the value is handed back.
    TrySendError {
        /// The queue is full.
        Full => "the queue is full",
        /// Every receiver is gone (dropped or dead).
        Disconnected => DISCONNECTED_TX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

value_error!(
    /// Why [`Queue::send`](crate::Queue::send) did not send; the value is handed back.
    SendError {
        /// Every receiver is gone (dropped or dead).
        Disconnected => DISCONNECTED_TX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

value_error!(
    /// Why [`Queue::send_timeout`](crate::Queue::send_timeout) did not send; the value is handed back.
    SendTimeoutError {
        /// The queue stayed full until the timeout.
        Timeout => "timed out waiting for room in the queue",
        /// Every receiver is gone (dropped or dead).
        Disconnected => DISCONNECTED_TX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

macro_rules! plain_error {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $var:ident => $msg:expr,)* }) => {
        $(#[$doc])*
        #[derive(Debug, PartialEq, Eq, Clone, Copy)]
        pub enum $name {
            $($(#[$vdoc])* $var,)*
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var => f.write_str($msg),)*
                }
            }
        }

        impl std::error::Error for $name {}
    };
}

const DISCONNECTED_RX: &str = "the queue is empty and every sender is gone";

plain_error!(
    /// Why [`Queue::try_recv`](crate::Queue::try_recv) returned nothing.
    TryRecvError {
        /// Nothing to receive now.
        Empty => "the queue is empty",
        /// Empty, and every sender is gone (dropped or dead).
        Disconnected => DISCONNECTED_RX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

plain_error!(
    /// Why [`Queue::recv`](crate::Queue::recv) returned nothing.
    RecvError {
        /// Empty, and every sender is gone (dropped or dead).
        Disconnected => DISCONNECTED_RX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

plain_error!(
    /// Why [`Queue::recv_timeout`](crate::Queue::recv_timeout) returned nothing.
    RecvTimeoutError {
        /// Nothing arrived before the timeout.
        Timeout => "timed out waiting for a message",
        /// Empty, and every sender is gone (dropped or dead).
        Disconnected => DISCONNECTED_RX,
        /// The segment was scribbled over.
        Corrupt => CORRUPT,
    }
);

/// Why a [`FrameQueue`](crate::FrameQueue) send failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameSendError {
    /// `try_send`: the queue is full.
    Full,
    /// The queue stayed full until the timeout.
    Timeout,
    /// Every receiver is gone (dropped or dead).
    Disconnected,
    /// The frame is longer than the queue's maximum frame size (never truncated).
    TooLarge {
        /// Bytes in the frame.
        len: usize,
        /// The queue's maximum frame size.
        max: usize,
    },
    /// The segment was scribbled over.
    Corrupt,
    /// `send_value`: the value could not be serialized.
    Encode(postcard::Error),
}

/// Why a [`FrameQueue`](crate::FrameQueue) receive failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameRecvError {
    /// `try_recv`: nothing to receive now.
    Empty,
    /// Nothing arrived before the timeout.
    Timeout,
    /// Empty, and every sender is gone.
    Disconnected,
    /// The queue's shared memory holds values no valid queue can hold, or its
    /// segment was truncated: this and later receives fail.
    Corrupt,
    /// A slot recorded a frame length above the queue's maximum (a scribbled
    /// slot: senders never write one). That frame was dropped; the next
    /// receive goes on with the frames after it.
    Oversized {
        /// The length the slot recorded.
        len: u32,
        /// The queue's `max_frame`.
        max: usize,
    },
    /// `recv_value`: the frame is not a valid encoding of the requested type
    /// (the frame was consumed).
    Decode(postcard::Error),
}

impl fmt::Display for FrameSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameSendError::Full => f.write_str("the queue is full"),
            FrameSendError::Timeout => f.write_str("timed out waiting for room in the queue"),
            FrameSendError::Disconnected => f.write_str(DISCONNECTED_TX),
            FrameSendError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the queue's maximum frame size of {max} bytes")
            }
            FrameSendError::Corrupt => f.write_str(CORRUPT),
            FrameSendError::Encode(e) => write!(f, "could not serialize the value: {e}"),
        }
    }
}

impl std::error::Error for FrameSendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameSendError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for FrameRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameRecvError::Empty => f.write_str("the queue is empty"),
            FrameRecvError::Timeout => f.write_str("timed out waiting for a message"),
            FrameRecvError::Disconnected => f.write_str(DISCONNECTED_RX),
            FrameRecvError::Corrupt => f.write_str(CORRUPT),
            FrameRecvError::Oversized { len, max } => write!(
                f,
                "dropped a frame whose slot records {len} bytes, more than the queue's maximum of {max} (a scribbled slot)"
            ),
            FrameRecvError::Decode(e) => write!(f, "could not deserialize the frame: {e}"),
        }
    }
}

impl std::error::Error for FrameRecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameRecvError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) failed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TaskDoneError {
    /// Called more times than items were put (Python raises `ValueError`).
    TooManyCalls,
    /// The queue's segment was truncated by another process: the count of
    /// unfinished tasks is gone.
    Corrupt,
}

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskDoneError::TooManyCalls => f.write_str("task_done() called more times than there were items put"),
            TaskDoneError::Corrupt => f.write_str(CORRUPT),
        }
    }
}

impl std::error::Error for TaskDoneError {}

/// Why [`JoinableQueue::join`](crate::JoinableQueue::join) (or
/// [`join_timeout`](crate::JoinableQueue::join_timeout)) returned before every
/// task was reported done.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum QueueJoinError {
    /// `join_timeout`: tasks were still unfinished when the timeout passed.
    Timeout,
    /// Tasks are unfinished and every receiver is gone (dropped or dead), so
    /// no one is left to report them done: the last receiver died between
    /// `get` and `task_done`, or the items were never taken. Reported only
    /// once a receiver has ever opened the queue (as `recv`'s
    /// `Disconnected` waits for a first sender).
    Disconnected {
        /// Items put and not reported done when the last receiver was found gone.
        unfinished: u64,
    },
    /// The queue's segment was truncated by another process.
    Corrupt,
}

impl fmt::Display for QueueJoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueJoinError::Timeout => f.write_str("timed out waiting for every task to be done"),
            QueueJoinError::Disconnected { unfinished } => write!(
                f,
                "{unfinished} task(s) are unfinished and every receiver of the queue is gone, so none will be reported done"
            ),
            QueueJoinError::Corrupt => f.write_str(CORRUPT),
        }
    }
}

impl std::error::Error for QueueJoinError {}
