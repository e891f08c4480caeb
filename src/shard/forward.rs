//! Forwarding client requests to the node that leads their shard, multiplexed: one
//! connection per (peer node, core), many calls in flight on it, each tagged with an
//! id. Frames queued while a write is in flight leave together in the next write, and
//! one read brings back as many answers as have arrived, so under load the syscalls
//! per forwarded request fall with the batch size (a connection per in-flight call
//! paid a write and a read each way per request).
//!
//! A failure of the connection fails every call on it: calls whose frame had not been
//! written yet get `WireError::Connect` (certainly not delivered: safe to retry), the
//! others `WireError::Io` (maybe applied). The next call reconnects, with the backoff
//! of every peer link (`crate::raft::network::Backoff`).
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::call::{NotLeader, Served, decode_served};
use crate::config::{PEER_READ_BUFFER_BYTES, PeerLimits};
use crate::raft::network::{Backoff, connect_peer};
use crate::raft::wire::{PeerRequest, PeerResponse, WireError, encode_frame, read_frame};

type Answer = Result<PeerResponse, WireError>;

/// Marks a link as connecting while it lives.
struct Connecting<'a>(&'a Cell<bool>);

impl<'a> Connecting<'a> {
    fn start(flag: &'a Cell<bool>) -> Connecting<'a> {
        flag.set(true);
        Connecting(flag)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// One multiplexed connection's state.
struct Link {
    /// The node at the other end (checked at the handshake).
    node: u64,
    addr: RefCell<String>,
    core: usize,
    use_base_port: Cell<bool>,
    /// Bumped on every (re)connection: tasks of an older one stop touching the state.
    generation: Cell<u64>,
    connected: Cell<bool>,
    connecting: Cell<bool>,
    /// Frames not written yet, with their ids.
    queued: RefCell<(Vec<u8>, Vec<u64>)>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    wake_writer: Notify,
    next_id: Cell<u64>,
    backoff: Cell<Backoff>,
    limits: PeerLimits,
}

impl Link {
    /// Fails every call: unwritten ones as not delivered, written ones as unknown.
    fn fail(&self, generation: u64, why: &str) {
        if self.generation.get() != generation || !self.connected.get() {
            return;
        }
        self.connected.set(false);
        self.backoff_failed();
        let (_, unsent) = std::mem::take(&mut *self.queued.borrow_mut());
        let mut pending = self.pending.borrow_mut();
        for id in unsent {
            if let Some(tx) = pending.remove(&id) {
                let _ = tx.send(Err(WireError::Connect(std::io::Error::other(why.to_owned()))));
            }
        }
        for (_, tx) in pending.drain() {
            let _ =
                tx.send(Err(WireError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, why.to_owned()))));
        }
        self.wake_writer.notify_one();
    }

    async fn ensure_connected(self: &Rc<Self>) -> Result<(), WireError> {
        if self.connected.get() {
            return Ok(());
        }
        let not_now =
            |why: &str| WireError::Connect(std::io::Error::new(std::io::ErrorKind::WouldBlock, why.to_owned()));
        if self.connecting.get() {
            return Err(not_now("connecting"));
        }
        if !self.backoff.get().may_try() {
            return Err(not_now("backing off after a failed connection"));
        }
        // Cleared however this ends: a caller that stops waiting (its deadline, or the
        // leader moved) drops this future mid-connect, and a flag left set would refuse
        // every later call on the link as "connecting", for good (found by
        // bench/faults.sh: forwards to a restarted node failed until the run ended).
        let connecting = Connecting::start(&self.connecting);
        let addr = self.addr.borrow().clone();
        let mut base = self.use_base_port.get();
        let connected = connect_peer(&addr, Some(self.node), self.core, &mut base, &self.limits).await;
        drop(connecting);
        let stream = match connected {
            Ok(s) => s,
            Err(e) => {
                self.backoff_failed();
                return Err(e);
            }
        };
        let mut backoff = self.backoff.get();
        backoff.succeeded();
        self.backoff.set(backoff);
        self.use_base_port.set(base);
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        self.connected.set(true);
        let (reader, writer) = futures_lite::io::split(stream);
        glommio::spawn_local(read_answers(self.clone(), reader, generation)).detach();
        glommio::spawn_local(write_frames(self.clone(), writer, generation)).detach();
        Ok(())
    }

    fn backoff_failed(&self) {
        let mut backoff = self.backoff.get();
        backoff.failed();
        self.backoff.set(backoff);
    }

    /// Sends one call and waits for its answer, within `timeout`.
    async fn call(self: &Rc<Self>, shard: u32, call: Vec<u8>, timeout: Duration) -> Answer {
        self.ensure_connected().await?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.queued.borrow_mut();
            let (buf, ids) = &mut *q;
            encode_frame(buf, &PeerRequest::Call { id, shard, call }, self.limits.frame_max_bytes)?;
            ids.push(id);
        }
        self.pending.borrow_mut().insert(id, tx);
        self.wake_writer.notify_one();
        match crate::raft::runtime::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(WireError::Io(std::io::Error::other("forwarding connection dropped the call"))),
            Err(_) => {
                // Its frame may still go out (and be applied); a late answer is dropped.
                self.pending.borrow_mut().remove(&id);
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the leader did not answer in time");
                Err(WireError::Io(e))
            }
        }
    }
}

async fn write_frames(link: Rc<Link>, mut writer: WriteHalf<TcpStream>, generation: u64) {
    loop {
        if link.generation.get() != generation || !link.connected.get() {
            return;
        }
        // Taking the ids out marks these calls as sent: a failure from here on leaves
        // their outcome unknown.
        let (buf, _sent) = std::mem::take(&mut *link.queued.borrow_mut());
        if buf.is_empty() {
            link.wake_writer.notified().await;
            continue;
        }
        if let Err(e) = async {
            writer.write_all(&buf).await?;
            writer.flush().await
        }
        .await
        {
            link.fail(generation, &format!("forwarding write: {e}"));
            return;
        }
    }
}

async fn read_answers(link: Rc<Link>, reader: ReadHalf<TcpStream>, generation: u64) {
    let mut reader = BufReader::with_capacity(PEER_READ_BUFFER_BYTES, reader);
    loop {
        let frame: Result<PeerResponse, _> = read_frame(&mut reader, link.limits.frame_max_bytes).await;
        if link.generation.get() != generation {
            return;
        }
        match frame {
            Ok(PeerResponse::CallReply { id, reply }) => {
                if let Some(tx) = link.pending.borrow_mut().remove(&id) {
                    let _ = tx.send(Ok(PeerResponse::CallReply { id, reply }));
                }
            }
            Ok(other) => {
                link.fail(generation, &format!("unexpected answer on a forwarding connection: {other:?}"));
                return;
            }
            Err(e) => {
                link.fail(generation, &format!("forwarding read: {e}"));
                return;
            }
        }
    }
}

/// The forwarding links of one core.
pub struct Forwarder {
    links: RefCell<HashMap<(u64, usize), Rc<Link>>>,
    limits: PeerLimits,
}

impl Forwarder {
    pub fn new(limits: PeerLimits) -> Forwarder {
        Forwarder { links: RefCell::new(HashMap::new()), limits }
    }

    /// Sends an encoded call for `shard` to core `core` of node `node` at `addr`. A
    /// node that refuses the frame (it has no such shard, or it is short of disk) did
    /// not run the call: `NotLeader`, like a replica that does not lead.
    pub async fn call(
        &self,
        node: u64,
        addr: &str,
        core: usize,
        shard: u32,
        call: Vec<u8>,
        timeout: Duration,
    ) -> Result<Served, WireError> {
        let link = {
            let mut links = self.links.borrow_mut();
            links
                .entry((node, core))
                .or_insert_with(|| {
                    Rc::new(Link {
                        node,
                        addr: RefCell::new(addr.to_owned()),
                        core,
                        use_base_port: Cell::new(false),
                        generation: Cell::new(0),
                        connected: Cell::new(false),
                        connecting: Cell::new(false),
                        queued: RefCell::new((Vec::new(), Vec::new())),
                        pending: RefCell::new(HashMap::new()),
                        wake_writer: Notify::new(),
                        next_id: Cell::new(0),
                        backoff: Cell::new(Backoff::new(&self.limits)),
                        limits: self.limits.clone(),
                    })
                })
                .clone()
        };
        if *link.addr.borrow() != addr {
            // The node moved: the next connection goes to the new address.
            *link.addr.borrow_mut() = addr.to_owned();
            let generation = link.generation.get();
            link.fail(generation, "peer address changed");
        }
        match link.call(shard, call, timeout).await? {
            PeerResponse::CallReply { reply, .. } => decode_served(&reply),
            PeerResponse::Refused(_) => Ok(Err(NotLeader::default())),
            _ => Err(WireError::Decode("node answered another request".into())),
        }
    }
}
