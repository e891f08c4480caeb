//! Stream tokens: a browser's `EventSource` cannot send an `Authorization` header, nor
//! can its `WebSocket`. With an API key configured, such a client asks its backend
//! (which holds the key) for a token (`POST /v1/contexts/:id/stream-token`) and opens
//! `GET /v1/contexts/:id/stream?token=…` itself.
//!
//! A token is `v1.<expiry, unix seconds>.<HMAC-SHA256 in hex>`, the MAC keyed with the
//! node's API key over the context id and the expiry: it opens that context's stream
//! only (read-only, never another route), until it expires, on any node that has the
//! same key (nodes need clocks within a few seconds of each other). Nothing is stored:
//! a token cannot be revoked before it expires, except by changing the key. It travels
//! in a URL, so proxies may log it; that is why it is short-lived and scoped to one
//! context's stream.
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: &str = "v1";
/// Separates the MAC's inputs (a context id holds no control character).
const DOMAIN: &[u8] = b"fleetlm stream token v1\0";

/// Why a token does not open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the stream token is malformed")]
    Malformed,
    #[error("the stream token has expired: ask for a new one")]
    Expired,
    #[error("the stream token was not issued for this context by a node with this API key")]
    WrongSignature,
}

fn mac(key: &[u8], context_id: &str, expires_unix_secs: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(DOMAIN);
    mac.update(context_id.as_bytes());
    mac.update(b"\0");
    mac.update(expires_unix_secs.to_string().as_bytes());
    mac
}

/// A token that opens the stream of `context_id` until `expires_unix_secs`.
pub fn issue(key: &[u8], context_id: &str, expires_unix_secs: u64) -> String {
    let tag = mac(key, context_id, expires_unix_secs).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{VERSION}.{expires_unix_secs}.{hex}")
}

/// Whether `token` opens the stream of `context_id` at `now_unix_secs` (the MAC is
/// compared in constant time).
pub fn check(key: &[u8], context_id: &str, token: &str, now_unix_secs: u64) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(VERSION), Some(expires), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed);
    }
    let tag: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex")).collect();
    mac(key, context_id, expires).verify_slice(&tag).map_err(|_| TokenError::WrongSignature)?;
    if now_unix_secs >= expires {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_context_until_it_expires_and_nothing_else() {
        let t = issue(b"key", "ctx-1", 1000);
        assert!(t.starts_with("v1.1000."), "{t}");
        assert_eq!(check(b"key", "ctx-1", &t, 999), Ok(()));
        assert_eq!(check(b"key", "ctx-1", &t, 1000), Err(TokenError::Expired));
        assert_eq!(check(b"key", "ctx-2", &t, 0), Err(TokenError::WrongSignature), "another context");
        assert_eq!(check(b"other", "ctx-1", &t, 0), Err(TokenError::WrongSignature), "another key");
        // A later expiry with the old MAC: the expiry is signed.
        let extended = t.replacen("v1.1000.", "v1.2000.", 1);
        assert_eq!(check(b"key", "ctx-1", &extended, 1500), Err(TokenError::WrongSignature));
        // Ids that concatenate alike are told apart.
        assert_ne!(issue(b"key", "a1", 23), issue(b"key", "a", 123));
    }

    #[test]
    fn malformed_tokens_are_refused_without_a_panic() {
        let good = issue(b"key", "c", 10);
        let flipped = format!("{}{}", &good[..good.len() - 1], if good.ends_with('0') { '1' } else { '0' });
        assert_eq!(check(b"key", "c", &flipped, 0), Err(TokenError::WrongSignature));
        for bad in ["", "v1", "v1.10", "v2.10.00", "v1.x.00", "v1.10.zz", "v1.10.", &format!("{good}.x"), "v1.10.é"] {
            assert_eq!(check(b"key", "c", bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
        let non_hex = format!("v1.10.{}", "g".repeat(64));
        assert_eq!(check(b"key", "c", &non_hex, 0), Err(TokenError::Malformed));
        let multibyte = format!("v1.10.{}", "é".repeat(32));
        assert_eq!(check(b"key", "c", &multibyte, 0), Err(TokenError::Malformed));
    }
}
