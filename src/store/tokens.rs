//! The token estimate of docs/api.md, used when a message carries no valid `token_count`.
//!
//! Per part: `{"type":"text","text":S}` counts `max(1, ceil(graphemes(S) / 4))`; any other
//! part counts the same formula over the graphemes of its compact JSON encoding. A
//! message with no parts counts 0. Graphemes, not bytes or chars, so that "é" written
//! as e + combining accent, or an emoji sequence, counts once.
use serde_json::Value;
use unicode_segmentation::UnicodeSegmentation;

fn per_text(s: &str) -> u64 {
    // ASCII without CR: every byte is its own grapheme (only "\r\n" joins two ASCII
    // bytes into one cluster), so skip the segmentation (it was 3% of an append).
    let graphemes = if s.is_ascii() && !s.as_bytes().contains(&b'\r') { s.len() } else { s.graphemes(true).count() };
    (graphemes as u64).div_ceil(4).max(1)
}

/// Estimated tokens of one part.
pub fn part_tokens(part: &Value) -> u64 {
    part_tokens_rendered(part, &part.to_string())
}

/// `part_tokens`, given the part's compact JSON already rendered (it is not rendered
/// again: a part of many numbers costs milliseconds to render).
pub fn part_tokens_rendered(part: &Value, compact_json: &str) -> u64 {
    if part.get("type").and_then(Value::as_str) == Some("text")
        && let Some(text) = part.get("text").and_then(Value::as_str)
    {
        return per_text(text);
    }
    per_text(compact_json)
}

/// Estimated tokens of a message's parts.
pub fn estimate_tokens(parts: &[Value]) -> u64 {
    parts.iter().map(part_tokens).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn examples_from_the_api_contract() {
        assert_eq!(estimate_tokens(&[json!({"type":"text","text":"How do I deploy this?"})]), 6);
        assert_eq!(estimate_tokens(&[json!({"type":"text","text":"x".repeat(1024)})]), 256);
        assert_eq!(estimate_tokens(&[]), 0);
        assert_eq!(estimate_tokens(&[json!({"type":"text","text":""})]), 1, "at least one per part");
    }

    #[test]
    fn graphemes_not_bytes() {
        // Four family emoji (each several code points joined) and four combined accents.
        let family = "👨\u{200d}👩\u{200d}👧".repeat(4);
        assert_eq!(estimate_tokens(&[json!({"type":"text","text":family})]), 1);
        let accents = "e\u{301}".repeat(8);
        assert_eq!(estimate_tokens(&[json!({"type":"text","text":accents})]), 2);
    }

    #[test]
    fn ascii_fast_path_agrees_with_segmentation() {
        for s in ["abc", "a\r\nb", "\r\n\r\n", "tab\there", "x".repeat(1023).as_str()] {
            let slow = (s.graphemes(true).count() as u64).div_ceil(4).max(1);
            assert_eq!(per_text(s), slow, "{s:?}");
        }
    }

    #[test]
    fn other_parts_count_their_compact_json() {
        let part = json!({"type":"tool_call","name":"search","args":{"q":"x"}});
        let len = part.to_string().len() as u64; // ASCII: graphemes == bytes
        assert_eq!(estimate_tokens(&[part]), len.div_ceil(4));
    }
}
