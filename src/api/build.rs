//! Turning an HTTP request on a context route into a `ShardCall`: the id, the query,
//! the body and the headers are validated here, on the core that received the request,
//! so that only well-formed commands are proposed.
use serde_json::Value;

use super::routes::Op;
use crate::config::StoreLimits;
use crate::http::{Request, Response, parse_query};
use crate::shard::ShardCall;
use crate::store::{Command, NewMessage, PutContext, ReplayFrom};
use crate::stream::{StreamOpen, Transport};

fn bad(code: &str, message: impl std::fmt::Display) -> Response {
    Response::error(400, code, message)
}

/// Validates a context id (docs/api.md): 1..256 bytes of UTF-8, no control characters, no `/`.
pub fn validate_id(id: &str) -> Result<(), Response> {
    if id.is_empty() || id.len() > 256 {
        return Err(bad("invalid_id", "context id must be 1 to 256 bytes"));
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(bad("invalid_id", "context id must not contain control characters or '/'"));
    }
    Ok(())
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn int(&self, key: &str) -> Result<Option<i64>, Response> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.parse::<i64>().map(Some).map_err(|_| bad("invalid_query", format!("{key} must be an integer")))
            }
        }
    }
    /// A page size: 1.., clamped to `max`; `default` when absent.
    fn limit(&self, default: usize, max: usize) -> Result<usize, Response> {
        match self.int("limit")? {
            None => Ok(default),
            Some(l) if l >= 1 => Ok((l as u64).min(max as u64) as usize),
            Some(_) => Err(bad("invalid_query", "limit must be an integer >= 1")),
        }
    }
    fn non_negative(&self, key: &str) -> Result<Option<u64>, Response> {
        match self.int(key)? {
            None => Ok(None),
            Some(v) if v >= 0 => Ok(Some(v as u64)),
            Some(_) => Err(bad("invalid_query", format!("{key} must be an integer >= 0"))),
        }
    }
    fn local(&self) -> Result<bool, Response> {
        match self.get("consistency") {
            None | Some("linearizable") => Ok(false),
            Some("local") => Ok(true),
            Some(_) => Err(bad("invalid_query", "consistency must be local or linearizable")),
        }
    }
}

fn json_body(req: &Request) -> Result<Value, Response> {
    serde_json::from_slice(&req.body).map_err(|e| bad("invalid_json", format!("request body is not valid JSON: {e}")))
}

/// The context operations `build_call` takes (the fuzz target and the proptest of
/// `tests/parsers_arbitrary.rs` drive every one).
pub const CONTEXT_OPS: [Op; 9] = [
    Op::PutContext,
    Op::GetContext,
    Op::DeleteContext,
    Op::PatchMetadata,
    Op::Append,
    Op::Replay,
    Op::Tail,
    Op::Window,
    Op::Compact,
];

/// Builds the call for context operation `op` on context `id`, or the 4xx to send.
pub fn build_call(op: Op, id: String, req: &Request, limits: &StoreLimits) -> Result<ShardCall, Response> {
    let query = Query(parse_query(&req.query).ok_or_else(|| bad("invalid_query", "malformed query string"))?);
    let now = String::new(); // set by the shard's leader when it proposes
    match op {
        Op::PutContext => {
            let put = PutContext::from_json(&json_body(req)?, limits).map_err(|m| bad("invalid_context_config", m))?;
            Ok(ShardCall::Write(Command::Put { id, put, now }))
        }
        Op::GetContext => Ok(ShardCall::Get { id, local: query.local()? }),
        Op::DeleteContext => Ok(ShardCall::Write(Command::Delete { id, now })),
        Op::PatchMetadata => {
            let body = json_body(req)?;
            let patch = match body.get("metadata") {
                Some(Value::Object(m)) => m.clone(),
                _ => return Err(bad("invalid_metadata", "body must be {\"metadata\": {…}}")),
            };
            Ok(ShardCall::Write(Command::PatchMetadata { id, patch, now }))
        }
        Op::Append => {
            let body = json_body(req)?;
            let message = body.get("message").ok_or_else(|| bad("invalid_message", "body must have a message"))?;
            let message = NewMessage::from_json(message, false, limits).map_err(|m| bad("invalid_message", m))?;
            let if_version = match body.get("if_version") {
                None | Some(Value::Null) => query.non_negative("if_version")?,
                Some(v) => {
                    Some(v.as_u64().ok_or_else(|| bad("invalid_message", "if_version must be an integer >= 0"))?)
                }
            };
            let idempotency_key = match req.header("idempotency-key") {
                None => None,
                Some(k) if !k.is_empty() && k.len() <= limits.idempotency_key_max_bytes => Some(k.to_owned()),
                Some(_) => {
                    let max = limits.idempotency_key_max_bytes;
                    return Err(bad("invalid_idempotency_key", format!("Idempotency-Key must be 1 to {max} bytes")));
                }
            };
            Ok(ShardCall::Write(Command::Append { id, message, if_version, idempotency_key, now }))
        }
        Op::Replay => {
            let from = match (query.int("from_seq")?, query.non_negative("after_seq")?) {
                (_, Some(after)) => ReplayFrom::AfterSeq(after),
                (Some(from), None) => ReplayFrom::FromSeq(from),
                (None, None) => ReplayFrom::FromSeq(0),
            };
            let limit = query.limit(limits.page_limit_default, limits.page_limit_max)?;
            Ok(ShardCall::Replay { id, from, limit, local: query.local()? })
        }
        Op::Tail => {
            let offset = query.non_negative("offset")?.unwrap_or(0);
            let limit = query.limit(limits.page_limit_default, limits.page_limit_max)?;
            Ok(ShardCall::Tail { id, offset, limit, local: query.local()? })
        }
        Op::Window => {
            let budget = match query.int("budget_tokens")? {
                None => None,
                Some(b) if b > 0 => Some(b as u64),
                Some(_) => return Err(bad("invalid_query", "budget_tokens must be an integer > 0")),
            };
            let if_version = query.non_negative("if_version")?;
            Ok(ShardCall::Window { id, budget, if_version, local: query.local()? })
        }
        Op::Compact => {
            let body = json_body(req)?;
            let items = match body.get("replacement") {
                Some(Value::Array(items)) => items,
                _ => return Err(bad("invalid_replacement", "replacement must be an array")),
            };
            let replacement = items
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    NewMessage::from_json(m, true, limits)
                        .map_err(|e| bad("invalid_replacement", format!("replacement[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let if_version = match body.get("if_version") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    Some(v.as_u64().ok_or_else(|| bad("invalid_replacement", "if_version must be an integer >= 0"))?)
                }
            };
            Ok(ShardCall::Write(Command::Compact { id, replacement, if_version, now }))
        }
        _ => Err(Response::error(500, "internal", format!("{op:?} is not a context operation"))),
    }
}

/// The lifetime a stream-token request asks for (`{"ttl_secs": n}`; no body, or no
/// field: the default), seconds.
pub fn stream_token_ttl(req: &Request) -> Result<u64, Response> {
    use crate::config::{STREAM_TOKEN_TTL_DEFAULT_SECS, STREAM_TOKEN_TTL_MAX_SECS};
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(STREAM_TOKEN_TTL_DEFAULT_SECS);
    }
    let body = json_body(req)?;
    let Some(obj) = body.as_object() else { return Err(bad("invalid_json", "the body must be a JSON object")) };
    if let Some(k) = obj.keys().find(|k| *k != "ttl_secs") {
        return Err(bad("invalid_json", format!("unknown field {k:?} (only ttl_secs)")));
    }
    match obj.get("ttl_secs") {
        None => Ok(STREAM_TOKEN_TTL_DEFAULT_SECS),
        Some(v) => v.as_u64().filter(|t| (1..=STREAM_TOKEN_TTL_MAX_SECS).contains(t)).ok_or_else(|| {
            bad("invalid_json", format!("ttl_secs must be an integer from 1 to {STREAM_TOKEN_TTL_MAX_SECS}"))
        }),
    }
}

/// The `token` query parameter of a stream request, if any.
pub fn stream_token_param(req: &Request) -> Option<String> {
    parse_query(&req.query)?.into_iter().rev().find(|(k, _)| k == "token").map(|(_, v)| v)
}

/// Validates a stream request (`GET /v1/contexts/:id/stream`): the cursor (`cursor=`,
/// else `Last-Event-ID`), and the transport: a WebSocket upgrade (RFC 6455 §4.2.1), or
/// SSE when the client accepts `text/event-stream`.
pub fn build_stream(id: String, req: &Request) -> Result<StreamOpen, Response> {
    let q = Query(parse_query(&req.query).ok_or_else(|| bad("invalid_query", "malformed query string"))?);
    if !q.local()? && q.get("consistency").is_some() {
        return Err(bad("invalid_query", "a stream is served from this node's replica: consistency=local only"));
    }
    let cursor =
        match (q.non_negative("cursor")?, req.header("last-event-id")) {
            (Some(c), _) => Some(c),
            (None, None) => None,
            (None, Some(v)) => Some(v.trim().parse::<u64>().map_err(|_| {
                bad("invalid_query", "Last-Event-ID must be a version the stream sent (an integer >= 0)")
            })?),
        };
    let has_token = |header: &str, token: &str| {
        req.header(header).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let transport = if has_token("upgrade", "websocket") {
        if !has_token("connection", "upgrade") {
            return Err(bad("invalid_stream_request", "a WebSocket upgrade needs Connection: Upgrade"));
        }
        if req.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Err(Response::error(426, "upgrade_required", "only WebSocket version 13 is spoken")
                .with_header("Sec-WebSocket-Version", "13"));
        }
        let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
        if !is_websocket_key(key) {
            return Err(bad("invalid_stream_request", "Sec-WebSocket-Key must be 16 bytes in base64"));
        }
        let accept_key = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        Transport::WebSocket { accept_key }
    } else if req.header("accept").is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream")) {
        Transport::Sse
    } else {
        return Err(Response::error(
            406,
            "not_acceptable",
            "a stream is sent as server-sent events (Accept: text/event-stream) or over a WebSocket (Upgrade: websocket)",
        ));
    };
    Ok(StreamOpen { context_id: id, cursor, transport })
}

/// 16 bytes in base64: 22 characters of the alphabet and `==`.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24 && b.ends_with(b"==") && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}
