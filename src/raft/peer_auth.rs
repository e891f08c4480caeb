//! Mutual authentication of peer connections with the cluster secret, before a single
//! frame is decoded: a stranger on the peer port can neither send Raft RPCs, membership
//! changes, snapshots nor forwarded calls, nor pose as a peer to a node that connects.
//! The same exchange tells each side which node, on which data dir, is at the other end
//! (`super::known_peers`): a node that lost its data is refused under its old id.
//!
//! Challenge-response with HMAC-SHA256 (RustCrypto `hmac` + `sha2`), fixed-size
//! messages, each side proving that it knows the secret over the other side's fresh
//! nonce (so a recorded exchange cannot be replayed) and its own identity (node id and
//! data-dir incarnation, 16 bytes):
//!
//! ```text
//! connector → acceptor  "FLMA" [version: u8 = 2] [nonce_c: 32] [id_c: 16]
//! acceptor  → connector [nonce_a: 32] [id_a: 16] [HMAC(secret, "fleetlm-accept" ‖ nonce_c ‖ id_c ‖ nonce_a ‖ id_a): 32]
//! connector → acceptor  [HMAC(secret, "fleetlm-connect" ‖ nonce_a ‖ id_a ‖ nonce_c ‖ id_c): 32]
//! acceptor  → connector [verdict: u8]  (0: linked; 1: the acceptor refuses id_c)
//! ```
//! The two MACs carry different labels, so one side's proof is never the other's.
//! Tags are compared in constant time. The whole exchange runs under a deadline. Without
//! a secret (`--insecure-peers`) the MACs are keyed with the empty key: they prove
//! nothing, but the identities are exchanged the same way, and a node with a secret
//! refuses one without. (Version 1, before identities, is refused as another protocol.)
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLMA";
const VERSION: u8 = 2;
const VERDICT_LINKED: u8 = 0;
const VERDICT_REFUSED: u8 = 1;
const NONCE_BYTES: usize = 32;
const TAG_BYTES: usize = 32;

use super::known_peers::{Identity, PeerBook, Refusal};
pub use crate::config::ClusterSecret;

const ID_BYTES: usize = Identity::BYTES;

/// The MAC over `label ‖ first ‖ second` with the cluster secret (the empty key without one).
fn tag(secret: Option<&ClusterSecret>, label: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    let key = secret.map_or(&[][..], |s| s.bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
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
    #[error("peer handshake: {0}")]
    Refused(#[from] Refusal),
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

/// The connecting side's half: proves our identity, checks the acceptor's (that it is
/// `dialled`, when we know whom we dialled, and that `book` admits it) and returns it.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: Option<&ClusterSecret>,
    book: &PeerBook,
    dialled: Option<u64>,
    timeout: Duration,
) -> Result<Identity, AuthError> {
    within(timeout, async {
        let mine = nonce();
        let me = book.me().to_bytes();
        let mut hello = Vec::with_capacity(5 + NONCE_BYTES + ID_BYTES);
        hello.extend_from_slice(MAGIC);
        hello.push(VERSION);
        hello.extend_from_slice(&mine);
        hello.extend_from_slice(&me);
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut answer = [0u8; NONCE_BYTES + ID_BYTES + TAG_BYTES];
        stream.read_exact(&mut answer).await?;
        let (theirs, rest) = answer.split_at(NONCE_BYTES);
        let (their_id, proof) = rest.split_at(ID_BYTES);
        tag(secret, b"fleetlm-accept", &[&mine[..], &me].concat(), &[theirs, their_id].concat())
            .verify_slice(proof)
            .map_err(|_| AuthError::BadProof)?;
        let peer = Identity::from_bytes(their_id.try_into().expect("ID_BYTES"));
        if let Some(expected) = dialled.filter(|&d| d != peer.node_id) {
            return Err(Refusal::WrongNode { expected, got: peer.node_id }.into());
        }
        book.admit(peer)?;
        let mine_proof =
            tag(secret, b"fleetlm-connect", &[theirs, their_id].concat(), &[&mine[..], &me].concat()).finalize();
        stream.write_all(&mine_proof.into_bytes()).await?;
        stream.flush().await?;
        let mut verdict = [0u8; 1];
        stream.read_exact(&mut verdict).await?;
        match verdict[0] {
            VERDICT_LINKED => Ok(peer),
            VERDICT_REFUSED => Err(Refusal::RefusedByPeer { me: book.me().node_id }.into()),
            _ => Err(AuthError::Protocol),
        }
    })
    .await
}

/// The accepting side's half: nothing else is read from `stream` before it succeeds.
/// Returns the connector's identity, which `book` admitted.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: Option<&ClusterSecret>,
    book: &PeerBook,
    timeout: Duration,
) -> Result<Identity, AuthError> {
    within(timeout, async {
        let mut hello = [0u8; 5 + NONCE_BYTES + ID_BYTES];
        stream.read_exact(&mut hello).await?;
        if &hello[..4] != MAGIC || hello[4] != VERSION {
            return Err(AuthError::Protocol);
        }
        let theirs = &hello[5..5 + NONCE_BYTES];
        let their_id = &hello[5 + NONCE_BYTES..];
        let mine = nonce();
        let me = book.me().to_bytes();
        let mut answer = Vec::with_capacity(NONCE_BYTES + ID_BYTES + TAG_BYTES);
        answer.extend_from_slice(&mine);
        answer.extend_from_slice(&me);
        let proof = tag(secret, b"fleetlm-accept", &[theirs, their_id].concat(), &[&mine[..], &me].concat());
        answer.extend_from_slice(&proof.finalize().into_bytes());
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut proof = [0u8; TAG_BYTES];
        stream.read_exact(&mut proof).await?;
        tag(secret, b"fleetlm-connect", &[&mine[..], &me].concat(), &[theirs, their_id].concat())
            .verify_slice(&proof)
            .map_err(|_| AuthError::BadProof)?;
        let peer = Identity::from_bytes(their_id.try_into().expect("ID_BYTES"));
        let admitted = book.admit(peer);
        let verdict = if admitted.is_ok() { VERDICT_LINKED } else { VERDICT_REFUSED };
        stream.write_all(&[verdict]).await?;
        stream.flush().await?;
        admitted?;
        Ok(peer)
    })
    .await
}
