//! Where message JSON lives. The store keeps only a `BodyRef` per message; the bytes
//! sit in a `Bodies` implementation: on disk behind a mapping in the server
//! (`crate::raft::bodies::FileBodies`), in memory in tests. This is the store's only
//! I/O edge, and it is passed in, so the store itself stays pure.

/// The place of one message's JSON in the body store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BodyRef {
    pub offset: u64,
    pub len: u32,
}

/// The body store could not take a write (disk full, I/O error). Applying cannot go
/// on: every replica must apply the same commands, so the shard stops loudly.
#[derive(Debug, thiserror::Error)]
#[error("body store: {0}")]
pub struct BodiesError(pub String);

impl BodiesError {
    /// `r` points outside what the store holds.
    pub fn missing(r: BodyRef) -> BodiesError {
        BodiesError(format!("no message body at offset {} ({} bytes)", r.offset, r.len))
    }
}

/// Append-only storage of message JSON.
pub trait Bodies {
    fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError>;
    /// The bytes of `r`. A reference that is not in the store is an error (the data is
    /// damaged, or a bug): never an empty answer, which would be spliced into JSON.
    fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError>;
    /// Whether `r`'s pages are in memory (a read of it would not wait for the disk).
    /// Stores in memory always are.
    fn is_resident(&self, _r: BodyRef) -> bool {
        true
    }
    /// Starts reading `r`'s pages from the disk without waiting for them (so that the
    /// reads of many bodies overlap instead of faulting one page at a time).
    fn prefetch(&self, _r: BodyRef) {}
}

/// Bodies in a `Vec`, for tests and tools.
#[derive(Debug, Default, Clone)]
pub struct MemBodies {
    bytes: Vec<u8>,
}

impl MemBodies {
    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Drops every byte from `len` on: what opening a body store at a snapshot's length
    /// does to what a crash left after it (tests of recovery).
    pub fn truncate(&mut self, len: u64) {
        self.bytes.truncate(len as usize);
    }

    /// Overwrites `[from, to)` with bytes no reader can decode: what releasing dead
    /// checkpoint ranges does on disk (a hole reads as zeros), for tests that check that
    /// nothing reads them again.
    pub fn scrub(&mut self, from: u64, to: u64) {
        let end = (to as usize).min(self.bytes.len());
        if let Some(range) = self.bytes.get_mut(from as usize..end) {
            range.fill(0xEE);
        }
    }
}

impl Bodies for MemBodies {
    fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
        let r = BodyRef { offset: self.bytes.len() as u64, len: json.len() as u32 };
        self.bytes.extend_from_slice(json);
        Ok(r)
    }
    fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
        let start = r.offset as usize;
        self.bytes.get(start..start.saturating_add(r.len as usize)).ok_or_else(|| BodiesError::missing(r))
    }
}

/// A body store seen by a read that must not wait for the disk on its core: a body
/// whose pages are not all in memory is not read but noted, and the read fails. The
/// caller asks for the noted pages, waits for them without holding the core, and runs
/// the read again (`crate::shard::replica::read`), until one run needs nothing more.
/// Read-only: an append through it is an error.
pub struct ResidentOnly<'a> {
    inner: &'a dyn Bodies,
    missing: std::cell::RefCell<Vec<BodyRef>>,
}

impl<'a> ResidentOnly<'a> {
    pub fn new(inner: &'a dyn Bodies) -> ResidentOnly<'a> {
        ResidentOnly { inner, missing: Default::default() }
    }

    /// The bodies a read through this view needed and did not find in memory.
    pub fn into_missing(self) -> Vec<BodyRef> {
        self.missing.into_inner()
    }
}

impl Bodies for ResidentOnly<'_> {
    fn append(&mut self, _json: &[u8]) -> Result<BodyRef, BodiesError> {
        Err(BodiesError("a read-only view of the body store takes no writes".into()))
    }
    fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
        if self.inner.is_resident(r) {
            return self.inner.get(r);
        }
        self.missing.borrow_mut().push(r);
        Err(BodiesError(format!("body at offset {} is not in memory", r.offset)))
    }
    fn is_resident(&self, r: BodyRef) -> bool {
        self.inner.is_resident(r)
    }
    fn prefetch(&self, r: BodyRef) {
        self.inner.prefetch(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_there_is_an_error_not_an_empty_answer() {
        let mut b = MemBodies::default();
        let r = b.append(b"{\"a\":1}").unwrap();
        assert_eq!(b.get(r).unwrap(), b"{\"a\":1}");
        let beyond = BodyRef { offset: r.offset + 1, len: r.len };
        assert!(b.get(beyond).unwrap_err().to_string().contains("no message body at offset 1"));
        assert!(b.get(BodyRef { offset: u64::MAX, len: u32::MAX }).is_err());
    }

    /// Bodies of which some are "on disk" (not resident) until `load` is called.
    struct HalfCold {
        inner: MemBodies,
        cold: std::cell::RefCell<Vec<BodyRef>>,
    }

    impl Bodies for HalfCold {
        fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
            self.inner.append(json)
        }
        fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
            self.inner.get(r)
        }
        fn is_resident(&self, r: BodyRef) -> bool {
            !self.cold.borrow().contains(&r)
        }
    }

    #[test]
    fn a_resident_only_view_reads_what_is_in_memory_and_notes_the_rest() {
        let mut inner = MemBodies::default();
        let (a, b, c) = (inner.append(b"a").unwrap(), inner.append(b"bb").unwrap(), inner.append(b"ccc").unwrap());
        let bodies = HalfCold { inner, cold: vec![b, c].into() };
        let view = ResidentOnly::new(&bodies);
        assert_eq!(view.get(a).unwrap(), b"a");
        assert!(view.get(b).is_err(), "not in memory: an error, never the bytes or nothing");
        assert!(view.get(c).is_err());
        assert!(!view.is_resident(c) && view.is_resident(a));
        assert_eq!(view.into_missing(), [b, c]);
        bodies.cold.borrow_mut().clear();
        let view = ResidentOnly::new(&bodies);
        assert_eq!(view.get(c).unwrap(), b"ccc");
        assert!(view.into_missing().is_empty());
    }
}
