//! Per core, forever: asks for a snapshot of every shard that keeps old segments of the
//! core's log alive and is too large for reclamation to copy forward (`crate::wal`, "an
//! idle shard pins the log"). A shard that stopped taking writes never reaches its next
//! snapshot by count, so its live log entries would pin every later segment of every
//! other shard on the core: the disk would grow without bound. After the snapshot,
//! openraft purges the log up to `--log-keep-entries` behind it, the shard becomes small,
//! and the next roll copies what is left forward.
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::core::CoreCtx;
use crate::config::{LOG_PRESSURE_POLL_MS, LOG_PRESSURE_SNAPSHOT_INTERVAL_MS};

pub async fn snapshot_shards_pinning_the_log(ctx: Rc<CoreCtx>) {
    let mut asked: HashMap<u32, Instant> = HashMap::new();
    let interval = Duration::from_millis(LOG_PRESSURE_SNAPSHOT_INTERVAL_MS);
    loop {
        glommio::timer::sleep(Duration::from_millis(LOG_PRESSURE_POLL_MS)).await;
        let Some(log) = ctx.core_log() else { continue };
        for g in log.with(|w| w.groups_pinning_old_segments()) {
            if asked.get(&g).is_some_and(|t| t.elapsed() < interval) {
                continue;
            }
            let Some(shard) = ctx.shard(g).filter(|s| !s.stopped.get()) else { continue };
            asked.insert(g, Instant::now());
            // Fire and forget: openraft builds it when it can (one at a time per shard).
            if shard.raft.trigger().snapshot().await.is_err() {
                shard.mark_stopped();
            }
        }
    }
}
