//! Which shard a context lives in, and which core runs a shard. Fixed forever: the hash
//! is FNV-1a 64 over the id's bytes (never change it; data placement depends on it).

/// FNV-1a, 64 bit.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of context `id` among `shards`.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    (stable_hash(id.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// The core that runs shard `shard`.
pub fn core_of(shard: u32, cores: usize) -> usize {
    shard as usize % cores.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_never_changes() {
        // Pinned values: if these change, existing data dirs would be misrouted.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("support-123", 8), (stable_hash(b"support-123") % 8) as u32);
    }

    #[test]
    fn shards_spread_over_cores() {
        let mut per_shard = [0u32; 8];
        for i in 0..8000 {
            per_shard[shard_of(&format!("ctx-{i}"), 8) as usize] += 1;
        }
        assert!(per_shard.iter().all(|&n| (800..1200).contains(&n)), "{per_shard:?}");
        assert_eq!((0..8).map(|s| core_of(s, 2)).collect::<Vec<_>>(), vec![0, 1, 0, 1, 0, 1, 0, 1]);
    }
}
