//! `Feed`: what a replica's applies change, for the streams watching its contexts
//! (`crate::shard::stream`). Single-threaded, like the state machine that publishes.
//!
//! Apply never waits for a subscriber: an event is rendered once, queued (shared) for
//! every subscriber of its context, and a subscriber whose queue is full is marked
//! behind (it gets `gap` and is closed) instead. Events are derived from the state
//! before and after each command, so a replayed idempotent append (no change) publishes
//! nothing, on followers as on the leader.
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::store::{Bodies, Context, Status};

/// Bounds of one subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    pub events_max: usize,
    pub bytes_max: usize,
}

/// One event as sent: its version and its JSON.
#[derive(Debug)]
pub struct FeedEvent {
    pub version: u64,
    pub json: Box<[u8]>,
    /// The context was tombstoned: the stream ends after this event.
    pub last: bool,
}

/// Why a feed ended every stream of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The replica installed a snapshot: what changed is not known event by event.
    SnapshotInstalled,
    /// The replica's Raft stopped (a storage failure); it is re-opened in the background.
    ShardStopped,
    /// Rendering an event failed (damaged data).
    Internal,
    /// The node is stopping (`crate::shutdown`).
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::SnapshotInstalled => "snapshot_installed",
            EndReason::ShardStopped => "shard_stopped",
            EndReason::Internal => "internal",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// What a subscriber receives next.
#[derive(Debug)]
pub enum Delivery {
    Event(Rc<FeedEvent>),
    /// It fell behind: `expected` is the first version it did not get, `actual` the
    /// version the context had reached.
    Gap {
        expected: u64,
        actual: u64,
    },
    End(EndReason),
}

#[derive(Debug)]
enum State {
    Open,
    Behind { expected: u64, actual: u64 },
    Ended(EndReason),
}

struct Subscriber {
    limits: FeedLimits,
    queue: RefCell<VecDeque<Rc<FeedEvent>>>,
    queued_bytes: Cell<usize>,
    /// The last version queued (or, at first, the subscriber's cursor): events at or
    /// before it are not queued.
    last_version: Cell<u64>,
    state: RefCell<State>,
    waker: RefCell<Option<Waker>>,
}

impl Subscriber {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn end(&self, why: EndReason) {
        *self.state.borrow_mut() = State::Ended(why);
        self.wake();
    }
}

/// The subscribers of one replica's contexts.
#[derive(Default)]
pub struct Feed {
    by_context: RefCell<HashMap<String, Vec<Rc<Subscriber>>>>,
}

impl Feed {
    /// Whether a stream watches context `id` (cheap; checked for every applied command).
    pub fn watches(&self, id: &str) -> bool {
        let by_context = self.by_context.borrow();
        !by_context.is_empty() && by_context.contains_key(id)
    }

    /// Streams watching context `id`.
    pub fn subscribers_of(&self, id: &str) -> usize {
        self.by_context.borrow().get(id).map_or(0, Vec::len)
    }

    /// Watches context `id` for the events after version `after`. Call it without an
    /// await after reading the state up to `after`, so that no event falls in between.
    pub fn subscribe(self: &Rc<Feed>, id: &str, after: u64, limits: FeedLimits) -> Subscription {
        let sub = Rc::new(Subscriber {
            limits,
            queue: RefCell::default(),
            queued_bytes: Cell::new(0),
            last_version: Cell::new(after),
            state: RefCell::new(State::Open),
            waker: RefCell::default(),
        });
        self.by_context.borrow_mut().entry(id.to_owned()).or_default().push(sub.clone());
        Subscription { feed: self.clone(), id: id.to_owned(), sub }
    }

    /// Publishes what one command changed in context `ctx`, given its version and
    /// status before (`before`, `None` if it did not exist).
    pub fn publish(&self, ctx: &Context, before: Option<(u64, Status)>, bodies: &dyn Bodies) {
        let Some((version_before, status_before)) = before else { return };
        let mut events = Vec::new();
        if ctx.version > version_before {
            let Ok(changes) = ctx.history_after(version_before, usize::MAX, usize::MAX, bodies) else { return };
            for change in &changes {
                match ctx.event_json(change, bodies) {
                    Ok(json) => events.push(FeedEvent { version: change.version(), json: json.into(), last: false }),
                    Err(_) => return self.end_context(&ctx.id, EndReason::Internal),
                }
            }
        }
        if status_before != Status::Tombstoned && ctx.status == Status::Tombstoned {
            let json = format!("{{\"type\":\"tombstoned\",\"version\":{}}}", ctx.version);
            events.push(FeedEvent { version: ctx.version, json: json.into_bytes().into(), last: true });
        }
        let by_context = self.by_context.borrow();
        let Some(subs) = by_context.get(&ctx.id) else { return };
        for event in events.into_iter().map(Rc::new) {
            for sub in subs {
                Feed::offer(sub, &event);
            }
        }
    }

    fn offer(sub: &Subscriber, event: &Rc<FeedEvent>) {
        if !matches!(*sub.state.borrow(), State::Open) || (event.version <= sub.last_version.get() && !event.last) {
            return;
        }
        let bytes = sub.queued_bytes.get() + event.json.len();
        let full = sub.queue.borrow().len() >= sub.limits.events_max || bytes > sub.limits.bytes_max;
        if full {
            // What is queued is still delivered, before the gap.
            let expected = sub.last_version.get() + 1;
            *sub.state.borrow_mut() = State::Behind { expected, actual: event.version };
        } else {
            sub.queue.borrow_mut().push_back(event.clone());
            sub.queued_bytes.set(bytes);
            sub.last_version.set(event.version);
        }
        sub.wake();
    }

    fn end_context(&self, id: &str, why: EndReason) {
        for sub in self.by_context.borrow().get(id).into_iter().flatten() {
            sub.end(why);
        }
    }

    /// Ends every stream of this replica (they resume with their cursor).
    pub fn end_all(&self, why: EndReason) {
        for sub in self.by_context.borrow().values().flatten() {
            sub.end(why);
        }
    }
}

/// One stream's subscription; dropping it unsubscribes.
pub struct Subscription {
    feed: Rc<Feed>,
    id: String,
    sub: Rc<Subscriber>,
}

impl Subscription {
    /// The next delivery: queued events first (a gap or an end comes after what was
    /// queued before it, so a stream ends with everything it was sent in order).
    pub async fn next(&self) -> Delivery {
        poll_fn(|cx| match self.try_next() {
            Some(delivery) => Poll::Ready(delivery),
            None => {
                *self.sub.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The next delivery if there is one now.
    pub fn try_next(&self) -> Option<Delivery> {
        if let Some(event) = self.sub.queue.borrow_mut().pop_front() {
            self.sub.queued_bytes.set(self.sub.queued_bytes.get() - event.json.len());
            return Some(Delivery::Event(event));
        }
        match *self.sub.state.borrow() {
            State::Open => None,
            State::Behind { expected, actual } => Some(Delivery::Gap { expected, actual }),
            State::Ended(why) => Some(Delivery::End(why)),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut by_context = self.feed.by_context.borrow_mut();
        if let Some(subs) = by_context.get_mut(&self.id) {
            subs.retain(|s| !Rc::ptr_eq(s, &self.sub));
            if subs.is_empty() {
                by_context.remove(&self.id);
            }
        }
    }
}
