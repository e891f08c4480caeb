//! A context's raw log as an append-only tree in the body store: memory per context is
//! bounded, whatever the length of its history. Pure (the body store is passed in).
//!
//! Each message is an `Entry` (where its JSON is, its token count, what kinds of parts
//! it has): 24 bytes. The newest `len % FANOUT` entries are held in memory (`tail`);
//! every `FANOUT` entries are written to the body store as one chunk, whose reference
//! joins `levels[0]`; every `FANOUT` references of a level are written as one chunk whose
//! reference joins the next level. So the log of `n` messages is a complete
//! `FANOUT`-ary tree over its oldest messages plus at most `FANOUT − 1` entries or
//! references per level in memory: ≤ 15 entries and ≤ 15 × ⌈log16 n⌉ references,
//! about 0.6 KB for a million messages, instead of a Vec of every message.
//!
//! Reading message `i` costs one chunk read per level below the one holding it (log16 n,
//! at most 5 for a million messages; chunks are 384 B or 192 B, read through the body
//! store's mapping). Reading a range reads each leaf chunk once.
//!
//! Written chunks are never changed: the tree is as durable as the body store, is cut
//! back with it after a crash (the snapshot names the body store's length, and every
//! chunk a snapshot's tree refers to was written before that length was taken), and is
//! shipped with the body files in a snapshot.
use serde::{Deserialize, Serialize};

use super::bodies::{Bodies, BodiesError, BodyRef};

/// Entries per leaf chunk and references per inner chunk.
pub const FANOUT: usize = 16;
const REF_BYTES: usize = 12;

/// A fixed-size record of an `IndexLog`.
pub trait Record: Copy {
    const BYTES: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Result<Self, BodiesError>;
}

/// What the part types of a message are, as far as the store needs to know without
/// reading its body (the skip_parts policy reads the body for `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindsTag {
    None,
    Text,
    Other,
}

impl KindsTag {
    fn byte(self) -> u8 {
        match self {
            KindsTag::None => 0,
            KindsTag::Text => 1,
            KindsTag::Other => 2,
        }
    }

    fn from_byte(b: u8) -> Result<KindsTag, BodiesError> {
        match b {
            0 => Ok(KindsTag::None),
            1 => Ok(KindsTag::Text),
            2 => Ok(KindsTag::Other),
            _ => Err(BodiesError(format!("message index: kinds tag {b}"))),
        }
    }
}

/// One message of the raw log: its seq is its position + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub body: BodyRef,
    pub token_count: u64,
    pub kinds: KindsTag,
}

impl Record for Entry {
    const BYTES: usize = 24;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body.offset.to_le_bytes());
        out.extend_from_slice(&self.body.len.to_le_bytes());
        out.extend_from_slice(&[self.kinds.byte(), 0, 0, 0]);
        out.extend_from_slice(&self.token_count.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Result<Entry, BodiesError> {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(Entry {
            body: BodyRef { offset: u64_at(0), len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) },
            kinds: KindsTag::from_byte(b[12])?,
            token_count: u64_at(16),
        })
    }
}

fn encode_ref(r: &BodyRef, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.offset.to_le_bytes());
    out.extend_from_slice(&r.len.to_le_bytes());
}

fn decode_ref(b: &[u8]) -> BodyRef {
    BodyRef {
        offset: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
    }
}

/// A chunk of the tree, checked for its expected size (a damaged reference must not be
/// read as a shorter chunk).
fn chunk(bodies: &dyn Bodies, r: BodyRef, bytes: usize) -> Result<&[u8], BodiesError> {
    let b = bodies.get(r)?;
    if b.len() != bytes {
        return Err(BodiesError(format!("message index chunk at {} is {} bytes, expected {bytes}", r.offset, b.len())));
    }
    Ok(b)
}

/// An append-only list of fixed-size records, as a tree in the body store (see the
/// module's doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexLog<E> {
    len: u64,
    /// The newest `len % FANOUT` entries.
    tail: Vec<E>,
    /// `levels[l]`: fewer than `FANOUT` references to full chunks of level `l`, each
    /// covering `FANOUT^(l+1)` messages, oldest first. Older levels hold older messages.
    levels: Vec<Vec<BodyRef>>,
}

/// `FANOUT^exp` messages (saturating: a level that large is never reached).
fn span(exp: usize) -> u64 {
    (FANOUT as u64).saturating_pow(exp as u32)
}

/// A context's raw log: one `Entry` per message.
pub type MessageLog = IndexLog<Entry>;

impl<E> Default for IndexLog<E> {
    fn default() -> Self {
        IndexLog { len: 0, tail: Vec::new(), levels: Vec::new() }
    }
}

impl<E: Record> IndexLog<E> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `entry`. Writes a chunk to `bodies` every `FANOUT` entries (and one per
    /// level that fills with it). On a body-store failure nothing changed (chunks
    /// already written are unreferenced bytes).
    pub fn push(&mut self, entry: E, bodies: &mut dyn Bodies) -> Result<(), BodiesError> {
        if self.tail.len() + 1 < FANOUT {
            // Exact capacity: a context holds its tail in memory for as long as it
            // lives, and doubling would keep up to twice the entries' bytes (a
            // reallocation per append costs less than that memory over 100k contexts).
            self.tail.reserve_exact(1);
            self.tail.push(entry);
            self.len += 1;
            return Ok(());
        }
        // The tail fills: write it, then every level it fills in turn.
        let mut bytes = Vec::with_capacity(FANOUT * E::BYTES);
        for e in self.tail.iter().chain(std::iter::once(&entry)) {
            e.encode(&mut bytes);
        }
        let mut carried = bodies.append(&bytes)?;
        let mut full_levels = 0;
        while self.levels.get(full_levels).is_some_and(|l| l.len() + 1 == FANOUT) {
            let mut bytes = Vec::with_capacity(FANOUT * REF_BYTES);
            for r in self.levels[full_levels].iter().chain(std::iter::once(&carried)) {
                encode_ref(r, &mut bytes);
            }
            carried = bodies.append(&bytes)?;
            full_levels += 1;
        }
        // Every write succeeded: change the state (memory given back: see above).
        self.tail = Vec::new();
        for level in &mut self.levels[..full_levels] {
            *level = Vec::new();
        }
        if self.levels.len() == full_levels {
            self.levels.reserve_exact(1);
            self.levels.push(Vec::new());
        }
        self.levels[full_levels].reserve_exact(1);
        self.levels[full_levels].push(carried);
        self.len += 1;
        assert_eq!(self.len % FANOUT as u64, 0, "a chunk is written when the tail fills");
        Ok(())
    }

    /// The entry at position `i` (seq `i + 1`).
    pub fn get(&self, i: u64, bodies: &dyn Bodies) -> Result<E, BodiesError> {
        let mut out = None;
        self.for_each(i, i + 1, bodies, |_, e| {
            out = Some(e);
            true
        })?;
        out.ok_or_else(|| BodiesError(format!("message index: no message at position {i} of {}", self.len)))
    }

    /// Calls `f(position, entry)` for positions `from..to` (cut to the log) in order,
    /// until it returns false. Each leaf chunk is read once.
    pub fn for_each(
        &self,
        from: u64,
        to: u64,
        bodies: &dyn Bodies,
        mut f: impl FnMut(u64, E) -> bool,
    ) -> Result<(), BodiesError> {
        let to = to.min(self.len);
        let mut i = from;
        let tail_from = self.len - self.tail.len() as u64;
        while i < to {
            if i >= tail_from {
                for (k, e) in self.tail[(i - tail_from) as usize..(to - tail_from) as usize].iter().enumerate() {
                    if !f(i + k as u64, *e) {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            let leaf = self.leaf(i, bodies)?;
            let block = i - i % FANOUT as u64;
            let end = (block + FANOUT as u64).min(to);
            for p in i..end {
                let at = (p - block) as usize * E::BYTES;
                if !f(p, E::decode(&leaf[at..at + E::BYTES])?) {
                    return Ok(());
                }
            }
            i = end;
        }
        Ok(())
    }

    /// The leaf chunk holding position `i` (which is before the tail).
    fn leaf<'a>(&self, i: u64, bodies: &'a dyn Bodies) -> Result<&'a [u8], BodiesError> {
        let mut start = 0u64;
        for (l, refs) in self.levels.iter().enumerate().rev() {
            let covers = span(l + 1);
            let n = refs.len() as u64;
            if i < start + n * covers {
                let mut r = refs[((i - start) / covers) as usize];
                let mut off = (i - start) % covers;
                for below in (0..l).rev() {
                    let refs = chunk(bodies, r, FANOUT * REF_BYTES)?;
                    let k = (off / span(below + 1)) as usize;
                    r = decode_ref(&refs[k * REF_BYTES..(k + 1) * REF_BYTES]);
                    off %= span(below + 1);
                }
                return chunk(bodies, r, FANOUT * E::BYTES);
            }
            start += n * covers;
        }
        Err(BodiesError(format!("message index: position {i} is not in a chunk (log of {})", self.len)))
    }

    /// Checks the shape invariants (tests, and after decoding a snapshot).
    pub fn check_shape(&self) -> Result<(), String> {
        let mut total = self.tail.len() as u64;
        if self.tail.len() >= FANOUT {
            return Err(format!("tail of {} entries", self.tail.len()));
        }
        for (l, refs) in self.levels.iter().enumerate() {
            if refs.len() >= FANOUT {
                return Err(format!("level {l} of {} references", refs.len()));
            }
            total = total.saturating_add(refs.len() as u64 * span(l + 1));
        }
        if total != self.len {
            return Err(format!("log of {} messages holds {total}", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemBodies;

    fn entry(n: u64, bodies: &mut MemBodies) -> Entry {
        let body = bodies.append(format!("{{\"n\":{n}}}").as_bytes()).unwrap();
        Entry { body, token_count: n * 3, kinds: if n % 3 == 0 { KindsTag::Other } else { KindsTag::Text } }
    }

    #[test]
    fn every_position_reads_back_across_levels() {
        let mut bodies = MemBodies::default();
        let mut log = MessageLog::default();
        let mut model = Vec::new();
        // 16^3 + 16^2 + 5: three levels, partial levels and a partial tail.
        for n in 0..(4096 + 256 + 5) {
            let e = entry(n, &mut bodies);
            log.push(e, &mut bodies).unwrap();
            model.push(e);
            log.check_shape().unwrap();
        }
        assert_eq!(log.levels.len(), 3);
        for (i, e) in model.iter().enumerate() {
            assert_eq!(log.get(i as u64, &bodies).unwrap(), *e, "position {i}");
        }
        let mut seen = Vec::new();
        log.for_each(100, 4200, &bodies, |p, e| {
            seen.push((p, e));
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 4100);
        assert!(seen.iter().all(|(p, e)| model[*p as usize] == *e));
        assert!(log.get(model.len() as u64, &bodies).is_err(), "past the end is an error");
    }

    #[test]
    fn memory_stays_bounded_as_the_log_grows() {
        let mut bodies = MemBodies::default();
        let mut log = MessageLog::default();
        for n in 0..100_000 {
            let e = entry(n, &mut bodies);
            log.push(e, &mut bodies).unwrap();
        }
        let held: usize = log.tail.len() + log.levels.iter().map(Vec::len).sum::<usize>();
        assert!(held <= (FANOUT - 1) * 6, "{held} entries and references in memory");
    }

    /// A body store that refuses writes after a count.
    struct Failing {
        inner: MemBodies,
        writes_left: usize,
    }

    impl Bodies for Failing {
        fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
            if self.writes_left == 0 {
                return Err(BodiesError("full".into()));
            }
            self.writes_left -= 1;
            self.inner.append(json)
        }
        fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
            self.inner.get(r)
        }
    }

    #[test]
    fn a_failed_chunk_write_changes_nothing() {
        let mut bodies = Failing { inner: MemBodies::default(), writes_left: usize::MAX };
        let mut log = MessageLog::default();
        let e = Entry { body: BodyRef { offset: 0, len: 0 }, token_count: 1, kinds: KindsTag::None };
        for _ in 0..(256 - 1) {
            log.push(e, &mut bodies).unwrap();
        }
        // The next push writes a leaf chunk and a level-1 chunk; the second write fails.
        bodies.writes_left = 1;
        let before = log.clone();
        assert!(log.push(e, &mut bodies).is_err());
        assert_eq!(log, before);
        bodies.writes_left = usize::MAX;
        log.push(e, &mut bodies).unwrap();
        log.check_shape().unwrap();
        assert_eq!(log.levels[1].len(), 1);
    }
}
