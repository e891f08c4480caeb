//! Per core, forever: asks for a snapshot of every shard whose changes since its last
//! snapshot may hold more than its hot-context byte budget in memory.
//!
//! A context changed since the last snapshot stays in memory (its state is not durable
//! anywhere else yet), and snapshots come every `--snapshot-every-entries` entries: at
//! 20,000 entries, 20,000 metadata changes of 64 KiB each (1.25 GiB) would all be held.
//! Each store counts what its changes may have added (`Store::changed_bytes`); past
//! `--hot-contexts-bytes-per-shard` the shard is snapshotted early, after which the
//! changed contexts are durable and the least recently used leave memory.
use std::rc::Rc;
use std::time::Duration;

use super::core::CoreCtx;
use crate::config::MEMORY_PRESSURE_POLL_MS;

pub async fn snapshot_shards_over_their_memory_budget(ctx: Rc<CoreCtx>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(MEMORY_PRESSURE_POLL_MS)).await;
        for (_, shard) in ctx.shards() {
            if shard.stopped.get() {
                continue;
            }
            let over = {
                let applied = shard.state.applied().borrow();
                applied.store.changed_bytes() > applied.store.limits().hot_contexts_max_bytes_per_shard
            };
            // openraft builds one snapshot at a time per shard and ignores the trigger
            // while one is being built; the count restarts when a build takes the changes.
            if over && shard.raft.trigger().snapshot().await.is_err() {
                shard.mark_stopped();
            }
        }
    }
}
