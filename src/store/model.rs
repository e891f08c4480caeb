//! The data model of a context and the validation of client input into it. Pure.
//!
//! Validation happens here, before a command is proposed to Raft: what reaches the
//! replicated state machine is already known to be well-formed, so apply never has a
//! reason to fail on input (API.md "(fix)": an invalid policy is rejected by PUT).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError, BodyRef};
use super::tokens::estimate_tokens;
use crate::config::StoreLimits;

/// A stored message, compact: where its API.md JSON lives in the body store (rendered
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

/// The stored JSON of a message, serialized from borrows (building a `json!` value
/// first cloned every part and was ≈4 % of the server's CPU under append load). Fields
/// in alphabetical order: the bytes stay exactly what the `json!` map (a `BTreeMap`)
/// wrote before, so bodies written by either agree.
#[derive(Serialize)]
struct RenderedMessage<'a> {
    inserted_at: Option<&'a str>,
    metadata: &'a Map<String, Value>,
    parts: &'a [Value],
    role: &'a str,
    seq: Option<u64>,
    token_count: u64,
}

impl Message {
    /// Renders the message and appends its JSON to `bodies`.
    pub fn new(
        seq: Option<u64>,
        msg: NewMessage,
        inserted_at: Option<String>,
        bodies: &mut dyn Bodies,
    ) -> Result<Message, BodiesError> {
        let kinds = Kinds::of(&msg.parts);
        let rendered = RenderedMessage {
            inserted_at: inserted_at.as_deref(),
            metadata: &msg.metadata,
            parts: &msg.parts,
            role: &msg.role,
            seq,
            token_count: msg.token_count,
        };
        let json = serde_json::to_vec(&rendered).expect("serializing JSON values into a Vec cannot fail");
        let body = bodies.append(&json)?;
        Ok(Message { seq, token_count: msg.token_count, kinds, body })
    }

    /// The API.md JSON of the message.
    pub fn json<'a>(&self, bodies: &'a dyn Bodies) -> &'a str {
        std::str::from_utf8(self.json_bytes(bodies)).unwrap_or("null")
    }

    /// The same JSON as bytes, unchecked: the hot read path (a 1000-message replay)
    /// spent a third of its CPU re-validating UTF-8 that `new` wrote from a `String`.
    pub fn json_bytes<'a>(&self, bodies: &'a dyn Bodies) -> &'a [u8] {
        bodies.get(self.body)
    }

    /// Length of the JSON in bytes, without touching the body store.
    pub fn json_len_bytes(&self) -> usize {
        self.body.len as usize
    }

    /// The message as a JSON value (tests, tools).
    pub fn to_json(&self, bodies: &dyn Bodies) -> Value {
        serde_json::from_str(self.json(bodies)).unwrap_or(Value::Null)
    }

    /// Whether a part's `type` starts with one of `kinds` (the skip_parts policy).
    pub fn has_part_kind(&self, kinds: &[String]) -> bool {
        let matches = |t: &str| kinds.iter().any(|k| t.starts_with(k.as_str()));
        match &self.kinds {
            Kinds::None => false,
            Kinds::Text => matches("text"),
            Kinds::Other(types) => types.iter().any(|t| matches(t)),
        }
    }
}

/// `{"messages":[…]` followed by `tail` (the object's other fields, from `,` to the
/// closing `}`): each message's stored JSON is copied in as is, never parsed again.
pub fn messages_object<'a>(
    messages: impl Iterator<Item = &'a Message> + Clone,
    bodies: &dyn Bodies,
    tail: &[u8],
) -> Vec<u8> {
    let len_bytes: usize = messages.clone().map(|m| m.json_len_bytes() + 1).sum();
    let mut out = Vec::with_capacity(len_bytes + 16 + tail.len());
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.json_bytes(bodies));
    }
    out.push(b']');
    out.extend_from_slice(tail);
    out
}

/// Part types of a message, without an allocation in the common cases (no parts, or
/// only text parts): a million messages should not cost a million small boxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Kinds {
    None,
    Text,
    Other(Box<[Box<str>]>),
}

impl Kinds {
    fn of(parts: &[Value]) -> Kinds {
        let ty = |p: &Value| p.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        if parts.is_empty() {
            Kinds::None
        } else if parts.iter().all(|p| ty(p) == "text") {
            Kinds::Text
        } else {
            Kinds::Other(parts.iter().map(|p| ty(p).into_boxed_str()).collect())
        }
    }
}

/// A message as a client sends it (append, or an item of a compaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub role: String,
    #[serde(with = "super::json_text::values")]
    pub parts: Vec<Value>,
    #[serde(with = "super::json_text::map")]
    pub metadata: Map<String, Value>,
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
            Some(Value::Array(parts)) => parts.clone(),
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
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("metadata must be an object".into()),
        };
        let token_count = match obj.get("token_count") {
            None | Some(Value::Null) => estimate_tokens(&parts),
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
                Some(Value::String(s)) if s.len() <= 64 => Some(s.clone()),
                Some(_) => return Err("inserted_at must be a string".into()),
            };
        }
        Ok(NewMessage { role, parts, metadata, token_count, seq, inserted_at })
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
            Some(Value::Object(m)) => Some(m.clone()),
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
