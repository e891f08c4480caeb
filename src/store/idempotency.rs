//! A context's idempotency keys: the outcome of every append that carried a key, kept
//! for the context's last `keys_max` keys. Pure (the body store is passed in).
//!
//! Each key and its outcome are one record in the body store (postcard), listed in an
//! `IndexLog` of 24-byte entries (the key's fingerprint and where its record is). Memory
//! holds the log's bounded tail and a table fingerprint → position for the live keys
//! (≈ 24 B per key instead of the key, its outcome and a second copy of the key for the
//! eviction order: ≈ 190 B for a 36-character key before). The table is derived, not
//! stored: snapshots carry only the log's in-memory part, and the table is rebuilt from
//! the on-disk entries when the context next sees a key. A fingerprint that matches is
//! checked against the key in the record, so two keys with the same fingerprint are
//! told apart (at the cost of a record read).
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::bodies::{Bodies, BodiesError, BodyRef};
use super::error::StoreError;
use super::message_log::{IndexLog, Record};
use super::model::Appended;

pub type AppendOutcome = Result<Appended, StoreError>;

/// One remembered key: its fingerprint and where its record `(key, outcome)` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    fingerprint: u64,
    record: BodyRef,
}

impl Record for KeyEntry {
    const BYTES: usize = 24;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.record.offset.to_le_bytes());
        out.extend_from_slice(&self.record.len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }

    fn decode(b: &[u8]) -> Result<Self, BodiesError> {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(KeyEntry {
            fingerprint: u64_at(0),
            record: BodyRef { offset: u64_at(8), len: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")) },
        })
    }
}

/// FNV-1a, 64 bits: fixed forever (fingerprints are on disk). Not a defence against
/// chosen collisions, and it need not be: a collision costs a record read, never a
/// wrong answer, and only in the context of the client that chose the keys.
fn fingerprint(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The live keys' positions by fingerprint; a second key with a fingerprint already in
/// `first` goes to `more`.
#[derive(Debug, Clone, Default)]
struct Table {
    first: HashMap<u64, u64>,
    more: Vec<(u64, u64)>,
}

impl Table {
    fn insert(&mut self, fingerprint: u64, position: u64) {
        match self.first.entry(fingerprint) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(position);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.more.push((fingerprint, position)),
        }
    }

    fn remove(&mut self, fingerprint: u64, position: u64) {
        if self.first.get(&fingerprint) == Some(&position) {
            self.first.remove(&fingerprint);
        } else {
            self.more.retain(|&(f, p)| (f, p) != (fingerprint, position));
        }
    }

    fn candidates(&self, fingerprint: u64) -> impl Iterator<Item = u64> + '_ {
        let more = self.more.iter().filter(move |(f, _)| *f == fingerprint).map(|(_, p)| *p);
        self.first.get(&fingerprint).copied().into_iter().chain(more)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Keys {
    log: IndexLog<KeyEntry>,
    /// Derived from the log's last `keys_max` entries; `None` until first needed (boxed:
    /// most contexts never see a key, and every context carries this field).
    #[serde(skip)]
    table: Option<Box<Table>>,
}

/// Equal key sets have the same log; the table is derived.
impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        self.log == other.log
    }
}

impl Keys {
    /// Keys remembered in all (evicted ones included).
    pub fn total(&self) -> u64 {
        self.log.len()
    }

    /// The first outcome of `key`, if it is one of the last `keys_max` keys.
    pub fn get(
        &mut self,
        key: &str,
        keys_max: usize,
        bodies: &dyn Bodies,
    ) -> Result<Option<AppendOutcome>, BodiesError> {
        if self.log.is_empty() {
            return Ok(None);
        }
        let fp = fingerprint(key);
        let candidates: Vec<u64> = self.table(keys_max, bodies)?.candidates(fp).collect();
        for position in candidates {
            let (k, outcome) = self.record(position, bodies)?;
            if k == key {
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    /// Remembers the outcome of a key not remembered yet; the oldest keys beyond
    /// `keys_max` are forgotten. On a body-store failure the caller stops applying
    /// (the key may be half-remembered in memory; the state is rebuilt from disk).
    pub fn remember(
        &mut self,
        key: &str,
        outcome: &AppendOutcome,
        keys_max: usize,
        bodies: &mut dyn Bodies,
    ) -> Result<(), BodiesError> {
        let keys_max = keys_max.max(1) as u64;
        self.table(keys_max as usize, bodies)?;
        let bytes =
            postcard::to_stdvec(&(key, outcome)).map_err(|e| BodiesError(format!("idempotency record: {e}")))?;
        let record = bodies.append(&bytes)?;
        let fp = fingerprint(key);
        let position = self.log.len();
        self.log.push(KeyEntry { fingerprint: fp, record }, bodies)?;
        let table = self.table.as_mut().expect("built above");
        table.insert(fp, position);
        // Forget what fell out of the last `keys_max`.
        let (from, to) = (position.saturating_sub(keys_max), (position + 1).saturating_sub(keys_max));
        for old in from..to {
            let e = self.log.get(old, bodies)?;
            self.table.as_mut().expect("built above").remove(e.fingerprint, old);
        }
        Ok(())
    }

    /// The table of the live keys, built from the on-disk entries if missing.
    fn table(&mut self, keys_max: usize, bodies: &dyn Bodies) -> Result<&Table, BodiesError> {
        if self.table.is_none() {
            let mut table = Table::default();
            let from = self.log.len().saturating_sub(keys_max.max(1) as u64);
            self.log.for_each(from, self.log.len(), bodies, |position, e| {
                table.insert(e.fingerprint, position);
                true
            })?;
            self.table = Some(Box::new(table));
        }
        Ok(self.table.as_ref().expect("just built"))
    }

    fn record(&self, position: u64, bodies: &dyn Bodies) -> Result<(String, AppendOutcome), BodiesError> {
        let e = self.log.get(position, bodies)?;
        postcard::from_bytes(bodies.get(e.record)?)
            .map_err(|err| BodiesError(format!("idempotency record at {}: {err}", e.record.offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemBodies;

    fn ok(seq: u64) -> AppendOutcome {
        Ok(Appended { seq, version: seq, token_estimate: 1 })
    }

    #[test]
    fn remembers_the_last_keys_max_keys_across_a_reload() {
        let mut bodies = MemBodies::default();
        let mut keys = Keys::default();
        for i in 0..100u64 {
            keys.remember(&format!("k{i}"), &ok(i), 40, &mut bodies).unwrap();
        }
        keys.remember("conflict", &Err(StoreError::Conflict { expected: 1, found: 2 }), 40, &mut bodies).unwrap();
        let check = |keys: &mut Keys, bodies: &MemBodies| {
            assert_eq!(keys.get("k99", 40, bodies).unwrap(), Some(ok(99)));
            assert_eq!(keys.get("k61", 40, bodies).unwrap(), Some(ok(61)), "the 40th newest");
            assert_eq!(keys.get("k60", 40, bodies).unwrap(), None, "forgotten: older than the last 40");
            assert_eq!(keys.get("k0", 40, bodies).unwrap(), None);
            assert_eq!(keys.get("never", 40, bodies).unwrap(), None);
            assert_eq!(
                keys.get("conflict", 40, bodies).unwrap(),
                Some(Err(StoreError::Conflict { expected: 1, found: 2 }))
            );
        };
        check(&mut keys, &bodies);
        // As a snapshot carries it: the table is rebuilt from the entries on disk.
        let mut reloaded: Keys = postcard::from_bytes(&postcard::to_stdvec(&keys).unwrap()).unwrap();
        assert!(reloaded.table.is_none());
        check(&mut reloaded, &bodies);
    }

    proptest::proptest! {
        /// Against a model: the last `keys_max` keys remembered, oldest evicted first;
        /// a reload (what a snapshot does) forgets nothing.
        #[test]
        fn behaves_like_a_bounded_map(keys_max in 1usize..8, ops in proptest::collection::vec((0u8..12, 0u8..10), 1..200)) {
            let mut bodies = MemBodies::default();
            let mut keys = Keys::default();
            let mut model: std::collections::VecDeque<(String, AppendOutcome)> = Default::default();
            for (i, (k, op)) in ops.into_iter().enumerate() {
                let key = format!("key-{k}");
                let want = model.iter().find(|(m, _)| *m == key).map(|(_, o)| o.clone());
                if op == 0 {
                    keys = postcard::from_bytes(&postcard::to_stdvec(&keys).unwrap()).unwrap();
                }
                let got = keys.get(&key, keys_max, &bodies).unwrap();
                proptest::prop_assert_eq!(&got, &want);
                if got.is_none() {
                    let outcome = if op % 3 == 1 { Err(StoreError::Tombstoned) } else { ok(i as u64) };
                    keys.remember(&key, &outcome, keys_max, &mut bodies).unwrap();
                    model.push_back((key, outcome));
                    while model.len() > keys_max {
                        model.pop_front();
                    }
                }
                let table = keys.table.as_ref().unwrap();
                proptest::prop_assert_eq!(table.first.len() + table.more.len(), model.len(), "the table holds the live keys only");
            }
        }
    }

    #[test]
    fn keys_with_the_same_fingerprint_are_told_apart() {
        let mut bodies = MemBodies::default();
        let mut keys = Keys::default();
        keys.remember("a", &ok(1), 10, &mut bodies).unwrap();
        keys.remember("b", &ok(2), 10, &mut bodies).unwrap();
        // Force a collision: "b"'s position filed under "a"'s fingerprint too.
        keys.table.as_mut().unwrap().insert(fingerprint("a"), 1);
        assert_eq!(keys.get("a", 10, &bodies).unwrap(), Some(ok(1)));
        assert_eq!(keys.get("b", 10, &bodies).unwrap(), Some(ok(2)));
        // Evicting through the second slot leaves the first.
        for i in 0..9u64 {
            keys.remember(&format!("x{i}"), &ok(10 + i), 10, &mut bodies).unwrap();
        }
        assert_eq!(keys.get("a", 10, &bodies).unwrap(), None, "evicted");
        assert_eq!(keys.get("b", 10, &bodies).unwrap(), Some(ok(2)));
    }
}
