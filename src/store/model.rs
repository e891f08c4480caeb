//! The data model of a context and the validation of client input into it. Pure.
//!
//! Validation happens here, before a command is proposed to Raft: what reaches the
//! replicated state machine is already known to be well-formed, so apply never has a
//! reason to fail on input (docs/api.md: an invalid policy is rejected by PUT).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError, BodyRef};
use super::message_log::{Entry, KindsTag};
use super::tokens::part_tokens_rendered;
use crate::config::StoreLimits;

/// What an append returned: replayed verbatim for a retry with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub version: u64,
    pub token_estimate: u64,
}

/// A stored message, compact: where its API JSON lives in the body store (rendered
/// once, returned as is by every read), plus the fields the store computes with. No
/// JSON is kept in memory: a message costs a few words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `None` only for compaction replacements that were given no seq.
    pub seq: Option<u64>,
    pub token_count: u64,
    /// The `type` of each part (for the skip_parts policy).
    kinds: Kinds,
    /// `{"inserted_at":…,"metadata":…,"parts":…,"role":…,"seq":…,"token_count":…}`.
    body: BodyRef,
}

impl Message {
    /// Renders the message and appends its JSON to `bodies`.
    pub fn new(
        seq: Option<u64>,
        msg: NewMessage,
        inserted_at: Option<String>,
        bodies: &mut dyn Bodies,
    ) -> Result<Message, BodiesError> {
        let kinds = Kinds::of_parts_json(&msg.parts_json);
        let json = render(seq, &msg, inserted_at.as_deref());
        let body = bodies.append(&json)?;
        Ok(Message { seq, token_count: msg.token_count, kinds, body })
    }

    /// The API JSON of the message (checked UTF-8).
    pub fn json<'a>(&self, bodies: &'a dyn Bodies) -> Result<&'a str, BodiesError> {
        std::str::from_utf8(self.json_bytes(bodies)?).map_err(|e| BodiesError(format!("message body: {e}")))
    }

    /// The same JSON as bytes, unchecked: the hot read path (a 1000-message replay)
    /// spent a third of its CPU re-validating UTF-8 that `new` wrote from a `String`.
    pub fn json_bytes<'a>(&self, bodies: &'a dyn Bodies) -> Result<&'a [u8], BodiesError> {
        bodies.get(self.body)
    }

    /// Length of the JSON in bytes, without touching the body store.
    pub fn json_len_bytes(&self) -> usize {
        self.body.len as usize
    }

    /// The message as a JSON value (tests, tools).
    pub fn to_json(&self, bodies: &dyn Bodies) -> Result<Value, BodiesError> {
        serde_json::from_str(self.json(bodies)?).map_err(|e| BodiesError(format!("message body: {e}")))
    }

    /// Whether a part's `type` starts with one of `kinds` (the skip_parts policy). A
    /// message read from the log index knows only that it has parts other than text:
    /// their types are read from its body.
    pub fn has_part_kind(&self, kinds: &[String], bodies: &dyn Bodies) -> Result<bool, BodiesError> {
        let matches = |t: &str| kinds.iter().any(|k| t.starts_with(k.as_str()));
        Ok(match &self.kinds {
            Kinds::None => false,
            Kinds::Text => matches("text"),
            Kinds::Other(types) => types.iter().any(|t| matches(t)),
            Kinds::InBody => Kinds::of_body_json(self.json_bytes(bodies)?).iter().any(|t| matches(t)),
        })
    }

    /// The message as the log index holds it.
    pub fn entry(&self) -> Entry {
        let kinds = match self.kinds {
            Kinds::None => KindsTag::None,
            Kinds::Text => KindsTag::Text,
            Kinds::Other(_) | Kinds::InBody => KindsTag::Other,
        };
        Entry { body: self.body, token_count: self.token_count, kinds }
    }

    /// The message at `seq` from its log index entry.
    pub fn from_entry(seq: u64, e: Entry) -> Message {
        let kinds = match e.kinds {
            KindsTag::None => Kinds::None,
            KindsTag::Text => Kinds::Text,
            KindsTag::Other => Kinds::InBody,
        };
        Message { seq: Some(seq), token_count: e.token_count, kinds, body: e.body }
    }
}

/// The stored JSON of a message:
/// `{"inserted_at":…,"metadata":…,"parts":…,"role":…,"seq":…,"token_count":…}`, keys in
/// alphabetical order, parts and metadata spliced in as the text validation rendered.
/// The bytes are exactly what a `json!` map (a `BTreeMap`) of the parsed values wrote
/// in earlier versions, so bodies written by either agree (test in tests/store.rs).
/// Neither parsing nor re-serializing the parts on every replica's apply: that was
/// ≈5 % of a 3-node cluster's CPU under append load.
fn render(seq: Option<u64>, msg: &NewMessage, inserted_at: Option<&str>) -> Vec<u8> {
    use std::io::Write;
    let fixed_bytes = 96;
    let mut out = Vec::with_capacity(fixed_bytes + msg.parts_json.len() + msg.metadata_json.len() + msg.role.len());
    let string = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(out, s).expect("writing a JSON string into a Vec cannot fail");
    };
    out.extend_from_slice(b"{\"inserted_at\":");
    match inserted_at {
        Some(t) => string(&mut out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(msg.metadata_json.as_bytes());
    out.extend_from_slice(b",\"parts\":");
    out.extend_from_slice(msg.parts_json.as_bytes());
    out.extend_from_slice(b",\"role\":");
    string(&mut out, &msg.role);
    // Writing into a Vec cannot fail.
    let _ = match seq {
        Some(n) => write!(out, ",\"seq\":{n}"),
        None => write!(out, ",\"seq\":null"),
    };
    let _ = write!(out, ",\"token_count\":{}}}", msg.token_count);
    out
}

/// `{"messages":[…]` followed by `tail` (the object's other fields, from `,` to the
/// closing `}`): each message's stored JSON is copied in as is, never parsed again.
pub fn messages_object<'a>(
    messages: impl Iterator<Item = &'a Message> + Clone,
    bodies: &dyn Bodies,
    tail: &[u8],
) -> Result<Vec<u8>, BodiesError> {
    // A cold page cache (a context not read for long, or after a restart): its bodies
    // are scattered by arrival order, one page fault each. The oldest is the likeliest
    // to be out; if it is, every read is started at once (measured on a cold tail of
    // ≈ 20 messages: p50 1.1 → 0.3 ms, `bench/results/index-engines.md`). One mincore
    // when it is in, as it is for hot contexts (a prefetch of pages already in memory
    // cost a warm tail of 100 70 µs).
    if messages.clone().next().is_some_and(|m| !bodies.is_resident(m.body)) {
        for m in messages.clone() {
            bodies.prefetch(m.body);
        }
    }
    let len_bytes: usize = messages.clone().map(|m| m.json_len_bytes() + 1).sum();
    let mut out = Vec::with_capacity(len_bytes + 16 + tail.len());
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.json_bytes(bodies)?);
    }
    out.push(b']');
    out.extend_from_slice(tail);
    Ok(out)
}

/// Part types of a message, without an allocation in the common cases (no parts, or
/// only text parts): a million messages should not cost a million small boxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Kinds {
    None,
    Text,
    Other(Box<[Box<str>]>),
    /// Other than text; the types are in the body (a message read from the log index).
    /// Last, so that the encoding of the others in snapshots is unchanged.
    InBody,
}

impl Kinds {
    /// The part types of a stored message's JSON (empty when it has none or is not one).
    fn of_body_json(body: &[u8]) -> Vec<String> {
        #[derive(Deserialize)]
        struct Part<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow, default)]
            parts: Vec<Part<'a>>,
        }
        serde_json::from_slice::<Body>(body)
            .map(|b| b.parts.into_iter().map(|p| p.kind.into_owned()).collect())
            .unwrap_or_default()
    }

    /// From the parts' JSON text, reading only each part's `type` (validation made sure
    /// every part is an object with a string `type`; text that is not, which no
    /// validated command carries, counts as no parts, the same on every replica).
    fn of_parts_json(parts_json: &str) -> Kinds {
        #[derive(Deserialize)]
        struct Part<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let parts: Vec<Part> = serde_json::from_str(parts_json).unwrap_or_default();
        if parts.is_empty() {
            Kinds::None
        } else if parts.iter().all(|p| p.kind == "text") {
            Kinds::Text
        } else {
            Kinds::Other(parts.iter().map(|p| Box::from(&*p.kind)).collect())
        }
    }
}

/// A message as a client sends it (append, or an item of a compaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub role: String,
    /// The parts array as compact JSON text, rendered once by validation and spliced
    /// into the stored message as is: no replica parses it again (its encoding is the
    /// string the earlier `json_text` adapter wrote, so logs written before still read).
    /// Private: only `from_json` (or the log, which holds what it built) makes one, so
    /// the text is always a JSON array of objects with a string `type`.
    #[serde(rename = "parts")]
    parts_json: String,
    /// The metadata object as compact JSON text (`{}` when none), likewise.
    #[serde(rename = "metadata")]
    metadata_json: String,
    /// The client's count, or the server's estimate when it gave none.
    pub token_count: u64,
    /// Kept from a compaction replacement item.
    pub seq: Option<u64>,
    pub inserted_at: Option<String>,
}

impl NewMessage {
    /// Validates a JSON message. `replacement` allows the `seq`/`inserted_at` of a
    /// compaction item.
    pub fn from_json(v: &Value, replacement: bool, limits: &StoreLimits) -> Result<NewMessage, String> {
        let obj = v.as_object().ok_or("message must be an object")?;
        let role = match obj.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            _ => return Err("role must be a non-empty string".into()),
        };
        if role.len() > limits.role_max_bytes {
            return Err(format!("role is longer than {} bytes", limits.role_max_bytes));
        }
        let parts = match obj.get("parts") {
            Some(Value::Array(parts)) => parts,
            _ => return Err("parts must be an array".into()),
        };
        if parts.len() > limits.parts_max {
            return Err(format!("more than {} parts", limits.parts_max));
        }
        for (i, p) in parts.iter().enumerate() {
            if !p.get("type").is_some_and(Value::is_string) || !p.is_object() {
                return Err(format!("parts[{i}] must be an object with a string type"));
            }
        }
        let metadata_json = match obj.get("metadata") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(m @ Value::Object(_)) => m.to_string(),
            Some(_) => return Err("metadata must be an object".into()),
        };
        // Each part is rendered once: into the stored parts array, and (for a part that
        // is not text) for its token estimate, which counts its compact JSON. The array
        // is exactly what rendering `parts` whole writes.
        let mut rendered = Vec::with_capacity(2 + parts.len() * 32);
        rendered.push(b'[');
        let mut estimate = 0u64;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                rendered.push(b',');
            }
            let start = rendered.len();
            serde_json::to_writer(&mut rendered, part).map_err(|e| format!("parts[{i}]: {e}"))?;
            let compact = std::str::from_utf8(&rendered[start..]).map_err(|e| format!("parts[{i}]: {e}"))?;
            estimate = estimate.saturating_add(part_tokens_rendered(part, compact));
        }
        rendered.push(b']');
        let parts_json = String::from_utf8(rendered).map_err(|e| format!("parts: {e}"))?;
        let token_count = match obj.get("token_count") {
            None | Some(Value::Null) => estimate,
            Some(v) => v.as_u64().ok_or("token_count must be an integer >= 0")?,
        };
        let (mut seq, mut inserted_at) = (None, None);
        if replacement {
            seq = match obj.get("seq") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or("seq must be an integer >= 0")?),
            };
            inserted_at = match obj.get("inserted_at") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.len() <= crate::config::REPLACEMENT_INSERTED_AT_MAX_BYTES => {
                    Some(s.clone())
                }
                Some(_) => {
                    return Err(format!(
                        "inserted_at must be null or a string of at most {} bytes",
                        crate::config::REPLACEMENT_INSERTED_AT_MAX_BYTES
                    ));
                }
            };
        }
        Ok(NewMessage { role, parts_json, metadata_json, token_count, seq, inserted_at })
    }
}

/// What happens when the window crosses `token_budget × trigger_ratio`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    Manual,
    LastN { limit: u32 },
    SkipParts { limit: u32, skip_kinds: Vec<String> },
}

impl Policy {
    pub fn from_json(v: &Value, limits: &StoreLimits) -> Result<Policy, String> {
        let obj = v.as_object().ok_or("policy must be an object")?;
        let strategy = obj.get("strategy").and_then(Value::as_str).ok_or("policy.strategy must be a string")?;
        let config = match obj.get("config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(c)) => c.clone(),
            Some(_) => return Err("policy.config must be an object".into()),
        };
        let limit = || -> Result<u32, String> {
            let l = config.get("limit").and_then(Value::as_u64).filter(|&l| l > 0);
            let l = l.ok_or("policy.config.limit must be an integer > 0")?;
            if l > u64::from(limits.policy_limit_max) {
                return Err(format!("policy.config.limit must be at most {}", limits.policy_limit_max));
            }
            Ok(l as u32)
        };
        match strategy {
            "manual" => Ok(Policy::Manual),
            "last_n" => Ok(Policy::LastN { limit: limit()? }),
            "skip_parts" => {
                let limit = limit()?;
                let skip_kinds = match config.get("skip_kinds") {
                    None | Some(Value::Null) => vec!["tool".to_owned(), "reasoning".to_owned()],
                    Some(Value::Array(kinds)) if kinds.len() <= limits.skip_kinds_max => kinds
                        .iter()
                        .map(|k| k.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or("policy.config.skip_kinds must be non-empty strings")?,
                    Some(_) => {
                        return Err(format!(
                            "policy.config.skip_kinds must be an array of at most {} strings",
                            limits.skip_kinds_max
                        ));
                    }
                };
                Ok(Policy::SkipParts { limit, skip_kinds })
            }
            other => Err(format!("unknown policy strategy {other:?}")),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Policy::Manual => serde_json::json!({"strategy": "manual", "config": {}}),
            Policy::LastN { limit } => serde_json::json!({"strategy": "last_n", "config": {"limit": limit}}),
            Policy::SkipParts { limit, skip_kinds } => {
                serde_json::json!({"strategy": "skip_parts", "config": {"limit": limit, "skip_kinds": skip_kinds}})
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Tombstoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Tombstoned => "tombstoned",
        }
    }
}

/// The configuration part of a PUT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextConfig {
    pub token_budget: u64,
    pub trigger_ratio: f64,
    pub policy: Policy,
}

impl ContextConfig {
    /// The compaction threshold in tokens: the window needs compaction when its
    /// tokens are strictly greater than this.
    pub fn threshold(&self, budget: u64) -> f64 {
        budget as f64 * self.trigger_ratio
    }
}

/// A validated PUT body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutContext {
    pub config: ContextConfig,
    #[serde(with = "super::json_text::opt_map")]
    pub metadata: Option<Map<String, Value>>,
    pub status: Option<Status>,
}

impl PutContext {
    pub fn from_json(v: &Value, limits: &StoreLimits) -> Result<PutContext, String> {
        let obj = v.as_object().ok_or("body must be an object")?;
        let token_budget = obj
            .get("token_budget")
            .and_then(Value::as_u64)
            .filter(|&b| b > 0)
            .ok_or("token_budget must be an integer > 0")?;
        let trigger_ratio = match obj.get("trigger_ratio") {
            None | Some(Value::Null) => 0.7,
            Some(v) => {
                v.as_f64().filter(|r| *r > 0.0 && *r <= 1.0).ok_or("trigger_ratio must be a number, 0 < r <= 1")?
            }
        };
        let policy = match obj.get("policy") {
            None | Some(Value::Null) => Policy::Manual,
            Some(p) => Policy::from_json(p, limits)?,
        };
        let metadata = match obj.get("metadata") {
            None => None,
            Some(m @ Value::Object(map)) => {
                let len = m.to_string().len();
                if len > limits.metadata_max_bytes {
                    return Err(format!("metadata is {len} bytes, over the limit of {}", limits.metadata_max_bytes));
                }
                Some(map.clone())
            }
            Some(_) => return Err("metadata must be an object".into()),
        };
        let status = match obj.get("status") {
            None => None,
            Some(Value::String(s)) if s == "active" => Some(Status::Active),
            Some(Value::String(s)) if s == "tombstoned" => Some(Status::Tombstoned),
            Some(_) => return Err("status must be \"active\" or \"tombstoned\"".into()),
        };
        Ok(PutContext { config: ContextConfig { token_budget, trigger_ratio, policy }, metadata, status })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Schemathesis sent a replacement whose `inserted_at` was a 44-character sentence of
    /// 4-byte letters (valid under the OpenAPI document) and got 400 "must be a string": the limit
    /// was 64 bytes and the message wrong. Now: 256 bytes (64 characters of any width),
    /// and the message names the limit.
    #[test]
    fn a_replacement_keeps_an_inserted_at_of_64_wide_characters_and_names_the_limit_beyond() {
        let limits = StoreLimits::default();
        let msg = |at: Value| json!({"role": "system", "parts": [], "inserted_at": at});
        let wide = "𝐓".repeat(64);
        let kept = NewMessage::from_json(&msg(json!(wide)), true, &limits).unwrap();
        assert_eq!(kept.inserted_at.as_deref(), Some(wide.as_str()));
        assert_eq!(NewMessage::from_json(&msg(Value::Null), true, &limits).unwrap().inserted_at, None);
        let err = NewMessage::from_json(&msg(json!("x".repeat(257))), true, &limits).unwrap_err();
        assert_eq!(err, "inserted_at must be null or a string of at most 256 bytes");
        assert!(NewMessage::from_json(&msg(json!(5)), true, &limits).is_err());
    }
}
