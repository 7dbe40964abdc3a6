//! The mutual HMAC-SHA256 challenge-response (CPython's `deliver_challenge` /
//! `answer_challenge`, run in both directions), on RustCrypto `hmac` + `sha2`
//! with challenges from `getrandom`. No hand-written crypto here: only the
//! message sequence.

use std::fmt;
use std::io;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{RecvError, SendError, SocketConnection, HANDSHAKE_TIMEOUT};
use crate::time::Deadline;

/// Random bytes in each challenge.
pub(crate) const CHALLENGE_LEN: usize = 32;
/// Largest handshake message accepted (a challenge is 57 bytes, an answer 32).
const HANDSHAKE_MAX: u64 = 256;
const CHALLENGE: &[u8] = b"#SHMPROC-CHALLENGE#{sha256}";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";

/// Whose answer a MAC is: mixed into the MAC so that an answer in one
/// direction is never a valid answer in the other (no reflection).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Client,
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"shmproc-auth-v1 client",
            Role::Server => b"shmproc-auth-v1 server",
        }
    }
}

/// Why the authentication handshake failed. On any of these the connection is
/// closed and nothing was accepted from it.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's answer to our challenge was wrong: it does not know our
    /// authkey (Python's `AuthenticationError: digest received was wrong`).
    WrongKey,
    /// The peer refused our answer: our authkey is not the peer's.
    Rejected,
    /// The peer did not finish the handshake within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The peer closed the connection during the handshake.
    Disconnected,
    /// The peer sent something that is not part of the handshake.
    Protocol(&'static str),
    /// The socket (or the random source) failed.
    Io(io::Error),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::WrongKey => f.write_str("authentication failed: the peer does not know the authkey"),
            AuthError::Rejected => f.write_str("authentication failed: the peer refused our authkey"),
            AuthError::Timeout => write!(f, "authentication timed out after {HANDSHAKE_TIMEOUT:?}"),
            AuthError::Disconnected => f.write_str("the peer closed the connection during authentication"),
            AuthError::Protocol(r) => write!(f, "authentication protocol error: {r}"),
            AuthError::Io(e) => write!(f, "authentication failed: {e}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// A handshake message; `by` is the whole handshake's deadline.
fn recv(conn: &SocketConnection, by: Deadline) -> Result<Vec<u8>, AuthError> {
    conn.recv_frame(by, HANDSHAKE_MAX).map_err(|e| match e {
        RecvError::Timeout => AuthError::Timeout,
        RecvError::Disconnected => AuthError::Disconnected,
        RecvError::TooLarge { .. } => AuthError::Protocol("oversized handshake message"),
        RecvError::Io(e) => AuthError::Io(e),
        RecvError::Deserialize(_) => AuthError::Protocol("undecodable handshake message"),
    })
}

fn send(conn: &SocketConnection, data: &[u8]) -> Result<(), AuthError> {
    conn.send_limited(data, HANDSHAKE_MAX).map_err(|e| match e {
        SendError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            AuthError::Timeout
        }
        SendError::Io(e) => AuthError::Io(e),
        _ => AuthError::Disconnected,
    })
}

fn mac(key: &[u8], role: Role, challenge: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(role.label());
    m.update(challenge);
    m
}

/// Sends a fresh challenge and checks the peer's answer (as `role`) in
/// constant time; tells the peer the verdict.
pub(crate) fn deliver_challenge(
    conn: &SocketConnection,
    key: &[u8],
    role: Role,
    by: Deadline,
) -> Result<(), AuthError> {
    let mut nonce = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| AuthError::Io(io::Error::other(e.to_string())))?;
    let mut msg = CHALLENGE.to_vec();
    msg.extend_from_slice(&nonce);
    send(conn, &msg)?;
    let answer = recv(conn, by)?;
    if mac(key, role, &msg).verify_slice(&answer).is_ok() {
        send(conn, WELCOME)
    } else {
        // Best effort: the peer learns why before the connection closes.
        let _ = send(conn, FAILURE);
        Err(AuthError::WrongKey)
    }
}

/// Answers the peer's challenge (as `role`) and reads its verdict.
pub(crate) fn answer_challenge(conn: &SocketConnection, key: &[u8], role: Role, by: Deadline) -> Result<(), AuthError> {
    let msg = recv(conn, by)?;
    if msg.len() != CHALLENGE.len() + CHALLENGE_LEN || !msg.starts_with(CHALLENGE) {
        return Err(AuthError::Protocol("expected a challenge"));
    }
    let answer = mac(key, role, &msg).finalize().into_bytes();
    send(conn, &answer)?;
    match recv(conn, by)?.as_slice() {
        WELCOME => Ok(()),
        FAILURE => Err(AuthError::Rejected),
        _ => Err(AuthError::Protocol("expected WELCOME or FAILURE")),
    }
}
