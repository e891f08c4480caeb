//! Mutual authentication of peer connections with the cluster secret, before a single
//! frame is decoded: a stranger on the peer port can neither send Raft RPCs, membership
//! changes, snapshots nor forwarded calls, nor pose as a peer to a node that connects.
//!
//! Challenge-response with HMAC-SHA256 (RustCrypto `hmac` + `sha2`), fixed-size
//! messages, each side proving that it knows the secret over the other side's fresh
//! nonce (so a recorded exchange cannot be replayed):
//!
//! ```text
//! connector → acceptor  "FLMA" [version: u8 = 1] [nonce_c: 32]
//! acceptor  → connector [nonce_a: 32] [HMAC(secret, "fleetlm-accept" ‖ nonce_c ‖ nonce_a): 32]
//! connector → acceptor  [HMAC(secret, "fleetlm-connect" ‖ nonce_a ‖ nonce_c): 32]
//! ```
//! The two MACs carry different labels, so one side's proof is never the other's.
//! Tags are compared in constant time. The whole exchange runs under a deadline. Without
//! a secret (a single node, or `--insecure-peers`) there is no handshake at all, so both
//! sides of a link must agree: a node with a secret refuses one without.
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLMA";
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 32;
const TAG_BYTES: usize = 32;

pub use crate::config::ClusterSecret;

/// The MAC over `label ‖ first ‖ second` with the cluster secret.
fn tag(secret: &ClusterSecret, label: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.bytes()).expect("HMAC takes a key of any length");
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("peer handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer handshake: not a FleetLM peer of this protocol version")]
    Protocol,
    #[error("peer handshake: the other side does not know the cluster secret")]
    BadProof,
    #[error("peer handshake: no answer within the deadline")]
    TimedOut,
}

fn nonce() -> [u8; NONCE_BYTES] {
    rand::random()
}

async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    crate::raft::runtime::timeout(timeout, f).await.unwrap_or(Err(AuthError::TimedOut))
}

/// The connecting side's half.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<(), AuthError> {
    within(timeout, async {
        let mine = nonce();
        let mut hello = Vec::with_capacity(5 + NONCE_BYTES);
        hello.extend_from_slice(MAGIC);
        hello.push(VERSION);
        hello.extend_from_slice(&mine);
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut answer = [0u8; NONCE_BYTES + TAG_BYTES];
        stream.read_exact(&mut answer).await?;
        let (theirs, proof) = answer.split_at(NONCE_BYTES);
        tag(secret, b"fleetlm-accept", &mine, theirs).verify_slice(proof).map_err(|_| AuthError::BadProof)?;
        let mine_proof = tag(secret, b"fleetlm-connect", theirs, &mine).finalize().into_bytes();
        stream.write_all(&mine_proof).await?;
        stream.flush().await?;
        Ok(())
    })
    .await
}

/// The accepting side's half: nothing else is read from `stream` before it succeeds.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<(), AuthError> {
    within(timeout, async {
        let mut hello = [0u8; 5 + NONCE_BYTES];
        stream.read_exact(&mut hello).await?;
        if &hello[..4] != MAGIC || hello[4] != VERSION {
            return Err(AuthError::Protocol);
        }
        let theirs = &hello[5..];
        let mine = nonce();
        let mut answer = Vec::with_capacity(NONCE_BYTES + TAG_BYTES);
        answer.extend_from_slice(&mine);
        answer.extend_from_slice(&tag(secret, b"fleetlm-accept", theirs, &mine).finalize().into_bytes());
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut proof = [0u8; TAG_BYTES];
        stream.read_exact(&mut proof).await?;
        tag(secret, b"fleetlm-connect", &mine, theirs).verify_slice(&proof).map_err(|_| AuthError::BadProof)
    })
    .await
}
