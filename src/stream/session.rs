//! One stream's events, independent of its transport: the history after the cursor
//! from this replica's applied state, page by page, then what each apply changes.
use std::rc::Rc;

use crate::http::Response;
use crate::raft::Shard;
use crate::raft::feed::{Delivery, EndReason, FeedEvent, FeedLimits, Subscription};
use crate::shard::CoreCtx;
use crate::store::Status;

use super::StreamOpen;

/// An event's JSON, owned (replayed) or shared with the other streams of its context (live).
pub enum Json {
    Owned(Vec<u8>),
    Shared(Rc<FeedEvent>),
}

impl Json {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Json::Owned(v) => v,
            Json::Shared(e) => &e.json,
        }
    }
}

/// One event to send; `id` is its version (SSE's `id:`), for events that have one.
pub struct Event {
    pub id: Option<u64>,
    pub json: Json,
}

/// What a session has next: events to send, in order; with `last`, the final one is
/// a tombstoned, gap or end event, and the stream closes after it.
pub struct Next {
    pub events: Vec<Event>,
    pub last: Option<Final>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Tombstoned,
    Gap,
    End,
}

enum Phase {
    /// Replaying the history after `position` (a version).
    Replay {
        position: u64,
    },
    Live(Subscription),
}

pub struct Session {
    shard: Rc<Shard>,
    id: String,
    phase: Phase,
    feed_limits: FeedLimits,
    page_max_bytes: usize,
    page_events_max: usize,
}

impl Session {
    /// A session of stream `open` on this core's replica of `shard`, or the answer that
    /// refuses it: the replica is not open, stopped or not caught up since its restart
    /// (503; local reads wait the same), or the context does not exist (404).
    pub fn admit(core: &CoreCtx, shard: u32, open: &StreamOpen) -> Result<Session, Response> {
        let unavailable = |why: &str| super::unavailable(core, why);
        let Some(replica) = core.shard(shard) else {
            return Err(unavailable("the context's shard is not open on this node yet"));
        };
        if replica.stopped.get() {
            return Err(unavailable(
                "this node's replica of the shard stopped after a storage failure; it is re-opened by itself",
            ));
        }
        if !replica.caught_up() {
            return Err(unavailable(
                "this replica restarted and has not yet applied what was committed before: retry shortly",
            ));
        }
        let version = {
            let applied = replica.state.applied().borrow();
            applied.store.get(&open.context_id, &applied.bodies).map(|ctx| ctx.version)
        };
        let version = match version {
            Ok(version) => version,
            Err(e) => return Err(Response::error(e.status(), e.code(), e)),
        };
        let limits = &core.stream_limits;
        Ok(Session {
            shard: replica,
            id: open.context_id.clone(),
            phase: Phase::Replay { position: open.cursor.unwrap_or(version) },
            feed_limits: FeedLimits { events_max: limits.buffer_events_max, bytes_max: limits.buffer_max_bytes },
            page_max_bytes: limits.replay_page_max_bytes,
            page_events_max: limits.replay_page_events_max,
        })
    }

    /// The next events; waits only for live ones (cancel-safe: dropping the future
    /// loses nothing).
    pub async fn next(&mut self) -> Next {
        loop {
            if let Phase::Replay { position } = self.phase
                && let Some(next) = self.replay(position)
            {
                return next;
            }
            let Phase::Live(sub) = &self.phase else { continue };
            let first = sub.next().await;
            let mut events = Vec::new();
            let mut delivery = Some(first);
            // Everything queued already goes out together.
            while let Some(d) = delivery.take() {
                match d {
                    Delivery::Event(e) if e.last => {
                        let event = Event { id: Some(e.version), json: Json::Shared(e) };
                        return finish(events, event, Final::Tombstoned);
                    }
                    Delivery::Event(e) => events.push(Event { id: Some(e.version), json: Json::Shared(e) }),
                    Delivery::Gap { expected, actual } => return finish(events, gap(expected, actual), Final::Gap),
                    Delivery::End(why) => return finish(events, end(why), Final::End),
                }
                if events.len() < self.page_events_max {
                    delivery = sub.try_next();
                }
            }
            return Next { events, last: None };
        }
    }

    /// One page of history after `position`; `None` once caught up (then live).
    fn replay(&mut self, position: u64) -> Option<Next> {
        let applied = self.shard.state.applied().borrow();
        let Ok(ctx) = applied.store.get(&self.id, &applied.bodies) else {
            return Some(finish(Vec::new(), end(EndReason::Internal), Final::End));
        };
        if position >= ctx.version {
            if self.shard.stopped.get() {
                // Its feed has ended already and would never deliver (`Shard::mark_stopped`).
                return Some(finish(Vec::new(), end(EndReason::ShardStopped), Final::End));
            }
            if ctx.status == Status::Tombstoned {
                let json = format!("{{\"type\":\"tombstoned\",\"version\":{}}}", ctx.version).into_bytes();
                let event = Event { id: Some(ctx.version), json: Json::Owned(json) };
                return Some(finish(Vec::new(), event, Final::Tombstoned));
            }
            if crate::shutdown::requested() {
                // The node is stopping, and its feeds were ended (or are about to be,
                // `node::stop_when_asked`): this stream would not be.
                return Some(finish(Vec::new(), end(EndReason::Shutdown), Final::End));
            }
            // No await between reading `ctx.version` and subscribing: the feed has every
            // event after it.
            self.phase = Phase::Live(self.shard.state.feed().subscribe(&self.id, position, self.feed_limits));
            return None;
        }
        let page = match ctx.history_after(position, self.page_events_max, self.page_max_bytes, &applied.bodies) {
            Ok(page) => page,
            Err(gap_at) => return Some(finish(Vec::new(), gap(position + 1, gap_at.floor_version), Final::Gap)),
        };
        let mut events = Vec::with_capacity(page.len());
        for change in &page {
            match ctx.event_json(change, &applied.bodies) {
                Ok(json) => events.push(Event { id: Some(change.version()), json: Json::Owned(json) }),
                Err(_) => return Some(finish(Vec::new(), end(EndReason::Internal), Final::End)),
            }
        }
        if let Some(last) = page.last() {
            self.phase = Phase::Replay { position: last.version() };
        }
        Some(Next { events, last: None })
    }
}

/// `events`, then `last`, after which the stream closes.
fn finish(mut events: Vec<Event>, last: Event, how: Final) -> Next {
    events.push(last);
    Next { events, last: Some(how) }
}

fn gap(expected: u64, actual: u64) -> Event {
    let json = format!("{{\"type\":\"gap\",\"expected\":{expected},\"actual\":{actual}}}").into_bytes();
    Event { id: None, json: Json::Owned(json) }
}

fn end(why: EndReason) -> Event {
    let json = format!("{{\"type\":\"end\",\"reason\":\"{}\"}}", why.as_str()).into_bytes();
    Event { id: None, json: Json::Owned(json) }
}
