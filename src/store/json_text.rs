//! Serde adapters that carry JSON values as their text, so that commands and
//! snapshots can use a compact binary codec (postcard), which cannot carry
//! self-describing values such as `serde_json::Value`. JSON codecs see a string.
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::{Map, Value};

fn parse<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    serde_json::from_str(&text).map_err(serde::de::Error::custom)
}

/// A JSON object.
pub mod map {
    use super::*;

    pub fn serialize<S: Serializer>(m: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(m).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        parse(d)
    }
}

/// An optional JSON object.
pub mod opt_map {
    use super::*;

    pub fn serialize<S: Serializer>(m: &Option<Map<String, Value>>, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(m).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
        parse(d)
    }
}
