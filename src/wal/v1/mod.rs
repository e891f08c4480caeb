//! Format 1 of the WAL: one log per shard, records without a group. Read only, by
//! `super::convert`, to move an old data dir's logs into the per-core logs of format 2.
//! The code is the format-1 codec and recovery scan as they were, unchanged.
pub mod format;
pub mod recovery;
