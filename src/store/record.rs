//! A context's checkpoint record: its state as the body store keeps it (postcard: the
//! context, then its compaction history). Written by checkpoints
//! (`super::checkpoint`), read back when a cold context is used (`super::commands`).
use super::bodies::BodiesError;
use super::context::Context;
use super::history::CompactionHistory;

fn err(what: &str, e: impl std::fmt::Display) -> BodiesError {
    BodiesError(format!("checkpoint {what}: {e}"))
}

/// A context's record.
pub fn encode_context(ctx: &Context) -> Result<Vec<u8>, BodiesError> {
    let out = postcard::to_stdvec(ctx).map_err(|e| err("encode", e))?;
    postcard::to_extend(ctx.history(), out).map_err(|e| err("encode", e))
}

pub fn decode_context(bytes: &[u8]) -> Result<Context, BodiesError> {
    let (mut ctx, rest) = postcard::take_from_bytes::<Context>(bytes).map_err(|e| err("decode", e))?;
    let history: CompactionHistory = postcard::from_bytes(rest).map_err(|e| err("decode", e))?;
    ctx.restore_history(Some(history));
    Ok(ctx)
}
