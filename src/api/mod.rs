//! The v1 API: HTTP ↔ shard calls and replies, nothing else. The route table
//! (`routes`), input validation into calls (`build`), and `handle`, which the HTTP
//! connection loop calls for every request; the calls run in `crate::shard`.
pub mod build;
pub mod byte_rate;
pub mod openapi;
pub mod routes;
pub mod stream_token;

use std::rc::Rc;

use serde_json::json;

use crate::http::{Request, Response, percent_decode};
use crate::shard::{CoreCtx, Reply, ShardCall};
use build::{build_call, validate_id};
use routes::{Op, Resolved, resolve};

fn not_found() -> Response {
    Response::error(404, "not_found", "no such route")
}

fn method_not_allowed(method: &str, segments: &[&str]) -> Response {
    let allow = routes::allowed_methods(segments);
    Response::error(405, "method_not_allowed", format!("{method} is not allowed here (allowed: {allow})"))
        .with_header("Allow", allow)
}

/// A shard's reply as the HTTP response.
fn respond(reply: Reply) -> Response {
    let mut r = if reply.json { Response::raw_json(reply.status, reply.body) } else { Response::empty(reply.status) };
    if let Some(v) = reply.retry_after {
        r = r.with_header("Retry-After", v);
    }
    if let Some(node) = reply.forwarded_to {
        r = r.with_header("FleetLM-Forwarded-To", node.to_string());
    }
    r.hold = reply.hold;
    r
}

/// `GET /v1/cluster`: this node's view, per shard its leader, term and commit index.
async fn cluster(core: &CoreCtx) -> Response {
    let calls = (0..core.shard_count).map(|s| core.route_to_shard(s, ShardCall::ShardStatus { shard: s }));
    let mut shards = Vec::new();
    for reply in futures_util::future::join_all(calls).await {
        match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            Ok(v) if reply.status == 200 => shards.push(v),
            _ => return respond(reply),
        }
    }
    let members: std::collections::BTreeSet<u64> = shards
        .iter()
        .flat_map(|s| s["voters"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .collect();
    let routing = json!({
        "shard_count": core.shard_count,
        "cores": core.cores,
        "core_listen": core.core_listen.map(|a| a.to_string()),
        "rule": "shard = FNV-1a 64 of the context id's UTF-8 bytes mod shard_count; core = shard mod cores; \
                 that core's port = core_listen's port + core",
    });
    Response::json(200, &json!({"node_id": core.node_id, "members": members, "shards": shards, "routing": routing}))
}

/// Runs one membership change on every shard (each on its leader) and reports them.
/// Shards change one by one in Raft: when some fail, the answer is the first failure's
/// status with every shard's outcome, so that an operator sees where the node is a
/// voter and where not, and repeats the request (or removes the node) to finish.
/// A shard that answered 503 quickly (its leader moved during the change, say to the
/// node's new preferred leader, leaving the outcome unknown) is asked again first, up to
/// `MEMBERSHIP_CHANGE_ATTEMPTS` times: each step is idempotent (adding a node that is
/// there, or a voter that votes, changes nothing), so a repeat finishes the change. One
/// that took half the deadline or more (a node that does not catch up) is not.
async fn change_all_shards(core: &CoreCtx, make: impl Fn(u32) -> ShardCall, node_id: u64) -> Response {
    let quick = std::time::Duration::from_millis(core.serve_limits.membership_deadline_ms / 2);
    let timed = |s: u32| {
        let call = core.route_to_shard(s, make(s));
        async move {
            let started = std::time::Instant::now();
            let reply = call.await;
            (reply, started.elapsed())
        }
    };
    let mut replies = futures_util::future::join_all((0..core.shard_count).map(timed)).await;
    for _ in 1..crate::config::MEMBERSHIP_CHANGE_ATTEMPTS {
        let again: Vec<u32> = (0..core.shard_count)
            .filter(|&s| replies[s as usize].0.status == 503 && replies[s as usize].1 < quick)
            .collect();
        if again.is_empty() {
            break;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(core.serve_limits.leader_retry_pause_ms)).await;
        for (s, reply) in again.iter().zip(futures_util::future::join_all(again.iter().map(|&s| timed(s))).await) {
            replies[*s as usize] = reply;
        }
    }
    let replies: Vec<Reply> = replies.into_iter().map(|(reply, _)| reply).collect();
    let Some(failed) = replies.iter().find(|r| r.status != 200) else {
        return Response::json(200, &json!({"node_id": node_id, "shards": core.shard_count}));
    };
    let per_shard: Vec<serde_json::Value> = replies
        .iter()
        .enumerate()
        .map(|(shard, r)| {
            let message =
                serde_json::from_slice::<serde_json::Value>(&r.body).ok().and_then(|b| b.get("message").cloned());
            json!({"shard": shard, "status": r.status, "message": message})
        })
        .collect();
    let done = replies.iter().filter(|r| r.status == 200).count();
    let body = json!({
        "error": serde_json::from_slice::<serde_json::Value>(&failed.body).ok().and_then(|b| b.get("error").cloned()),
        "message": format!("the change of node {node_id} took effect on {done} of {} shards; repeat the request to finish it, or undo it", replies.len()),
        "node_id": node_id,
        "shards": per_shard,
    });
    let mut resp = Response::json(failed.status, &body);
    if let Some(after) = &failed.retry_after {
        resp = resp.with_header("Retry-After", after.clone());
    }
    resp
}

/// `POST /v1/cluster/members {"node_id":4,"addr":"10.0.0.4:5001"}`: `addr` is the new
/// node's peer address. It catches up as a learner on every shard, then votes.
async fn add_member(core: &CoreCtx, req: &Request) -> Response {
    let body: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return Response::error(400, "invalid_json", e),
    };
    let Some(node_id) = body.get("node_id").and_then(serde_json::Value::as_u64).filter(|&n| n > 0) else {
        return Response::error(400, "invalid_json", "node_id must be an integer > 0");
    };
    let addr = body.get("addr").and_then(serde_json::Value::as_str).unwrap_or("");
    let valid_addr = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_addr || addr.len() > 256 {
        return Response::error(400, "invalid_json", "addr must be the node's peer address, host:port");
    }
    let make = |s| ShardCall::AddMember { shard: s, node_id, addr: addr.to_owned() };
    change_all_shards(core, make, node_id).await
}

/// `DELETE /v1/cluster/members/:node_id`.
async fn remove_member(core: &CoreCtx, raw_id: &str) -> Response {
    let Some(node_id) = raw_id.parse::<u64>().ok().filter(|&n| n > 0) else {
        return Response::error(400, "invalid_id", "node id must be an integer > 0");
    };
    change_all_shards(core, |s| ShardCall::RemoveMember { shard: s, node_id }, node_id).await
}

/// `GET /metrics`: Prometheus text (no API key, like `/health/*`).
async fn metrics(core: &CoreCtx) -> Response {
    let crate::metrics::Snapshot { counters, histograms: hists } = core.collect_metrics(false).await;
    let calls = (0..core.shard_count).map(|s| core.route_to_shard(s, ShardCall::ShardStatus { shard: s }));
    let shards: Vec<serde_json::Value> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect();
    let readiness = core.readiness();
    let node = crate::metrics::prometheus::NodeState {
        node_id: core.node_id,
        ready: readiness.ready(),
        shards_stopped: readiness.stopped,
        shard_restarts: readiness.restarts,
        disk_free_bytes: crate::files::free_bytes(&core.data_dir).ok(),
        disk_reserve_bytes: core.disk_reserve_bytes(),
    };
    let body = crate::metrics::prometheus::render(&node, &counters, &hists, &shards);
    Response::text(200, body, "text/plain; version=0.0.4; charset=utf-8")
}

/// Answers one request, and counts it by route and status.
pub async fn handle(req: Request, core: &Rc<CoreCtx>) -> Response {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let resolved = resolve(&segments, req.method.as_str());
    let resp = route(&req, &segments, resolved, core).await;
    crate::metrics::count_request(resolved.label(), resp.status);
    resp
}

/// `Authorization: Bearer <key>` (the scheme in any letter case, RFC 9110) with the
/// node's key, compared in constant time.
fn authorized(req: &Request, core: &CoreCtx) -> bool {
    let Some(key) = &core.api_key else { return true };
    let Some(given) = req.header("authorization").and_then(bearer_token) else { return false };
    constant_time_eq(given.as_bytes(), key.as_bytes())
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(req: &Request, segments: &[&str], resolved: Resolved<'_>, core: &Rc<CoreCtx>) -> Response {
    let method = req.method.as_str();
    let (op, param) = match resolved {
        Resolved::NotFound { needs_auth, .. } => {
            if needs_auth && !authorized(req, core) {
                return unauthorized();
            }
            return not_found();
        }
        Resolved::MethodNotAllowed { like, param } => {
            if like.needs_auth() && !authorized(req, core) {
                return unauthorized();
            }
            // A context id is checked before the method (as it always was).
            if like.histogram().is_some()
                && let Err(resp) = context_id(param.unwrap_or_default())
            {
                return resp;
            }
            return method_not_allowed(method, segments);
        }
        Resolved::Found { op, param } => (op, param),
    };
    if op.needs_auth() && !authorized(req, core) {
        match stream_token_refusal(op, req, core, param) {
            None => {} // a stream opened with a valid token
            Some(why) => return Response::error(401, "unauthorized", why),
        }
    }
    match op {
        Op::HealthLive => Response::json(200, &json!({"status": "ok"})),
        Op::HealthReady => health_ready(core),
        Op::Metrics => metrics(core).await,
        Op::OpenApi => Response::raw_json(200, openapi::DOCUMENT.as_bytes().to_vec()),
        Op::AdminLatency => {
            let hists = core.collect_metrics(false).await.histograms;
            let body =
                json!({"node_id": core.node_id, "unit": "us", "histograms": crate::metrics::percentiles_json(&hists)});
            Response::json(200, &body)
        }
        Op::ClusterStatus => cluster(core).await,
        Op::AddMember => add_member(core, req).await,
        Op::RemoveMember => remove_member(core, param.unwrap_or_default()).await,
        Op::Stream => stream(core, req, param.unwrap_or_default()),
        Op::StreamToken => stream_token(core, req, param.unwrap_or_default()),
        _ => {
            let Some(histogram) = op.histogram() else { return not_found() };
            let id = match context_id(param.unwrap_or_default()) {
                Ok(id) => id,
                Err(resp) => return resp,
            };
            let started = std::time::Instant::now();
            if op.stores_body()
                && let Err(refused) = pace_large_body(core, req, started).await
            {
                crate::metrics::record_since(histogram, started);
                return refused;
            }
            let built = if req.body.len() >= crate::config::VALIDATE_OFF_CORE_MIN_BYTES {
                build_call_off_core(core, op, id, req).await
            } else {
                build_call(op, id, req, &core.store_limits)
            };
            let resp = match built {
                Ok(call) => respond(core.route(call, started).await),
                Err(resp) => resp,
            };
            crate::metrics::record_since(histogram, started);
            resp
        }
    }
}

/// Waits for this core's share of the large-body byte rate (`byte_rate`), or refuses
/// with 429 when the wait would be longer than `LARGE_BODY_WAIT_MAX_MS`.
async fn pace_large_body(core: &CoreCtx, req: &Request, now: std::time::Instant) -> Result<(), Response> {
    if req.body.len() < crate::config::RATE_LIMITED_BODY_MIN_BYTES {
        return Ok(());
    }
    let admit = core.large_bodies.borrow_mut().admit(now, req.body.len() as u64);
    match admit {
        byte_rate::Admit::Now => Ok(()),
        byte_rate::Admit::After(wait) => {
            glommio::timer::sleep(wait).await;
            crate::metrics::record("large_body.wait", wait.as_micros() as u64);
            Ok(())
        }
        byte_rate::Admit::Refused { retry_after } => Err(Response::error(
            429,
            "rate_limited",
            "large request bodies are arriving faster than this node's --large-body-bytes-per-sec: retry later",
        )
        .with_header("Retry-After", byte_rate::retry_after_secs(retry_after).to_string())),
    }
}

/// `build_call` for a large body, with the command's size check, on the offload
/// threads: parsing and rendering a large body takes milliseconds (a 1 MiB part of
/// numbers: ≈30 ms), which on the executor would stall every other request of the core
/// (`crate::offload`). They run on idle CPU only, so the wait is bounded by the write
/// deadline (then 503).
async fn build_call_off_core(core: &CoreCtx, op: Op, id: String, req: &Request) -> Result<ShardCall, Response> {
    let (req, limits, record_max) = (req.clone(), core.store_limits.clone(), core.record_payload_max_bytes);
    let job = core.offload.run(move || {
        // A refusal crosses back as its parts (a `Response` may hold a connection
        // hand-over, which stays on its core; these never do).
        let call = build_call(op, id, &req, &limits).map_err(|r| (r.status, r.headers, r.body, r.content_type))?;
        match &call {
            ShardCall::Write(cmd) => match crate::shard::replica::command_too_large(cmd, record_max) {
                Some(refused) => Err((refused.status, Vec::new(), refused.body, "application/json")),
                None => Ok(call),
            },
            _ => Ok(call),
        }
    });
    let deadline = std::time::Duration::from_millis(core.serve_limits.write_deadline_ms);
    match crate::raft::runtime::timeout(deadline, job).await {
        Ok(Ok(built)) => built.map_err(|(status, headers, body, content_type)| Response {
            headers,
            body,
            content_type,
            ..Response::empty(status)
        }),
        Ok(Err(busy)) => Err(respond(Reply::unavailable(&core.serve_limits, busy))),
        Err(_) => Err(respond(Reply::unavailable(
            &core.serve_limits,
            "validating the request took longer than the deadline (the node is busy): retry shortly",
        ))),
    }
}

/// `GET /v1/contexts/:id/stream`: validated here; the connection is then handed to
/// the stream (`crate::stream`), which answers on it (the context may still be missing:
/// that is known where its replica is).
fn stream(core: &Rc<CoreCtx>, req: &Request, raw_id: &str) -> Response {
    let open = match context_id(raw_id).and_then(|id| build::build_stream(id, req)) {
        Ok(open) => open,
        Err(refusal) => return refusal,
    };
    let core = core.clone();
    Response::take_over(move |socket, read_ahead| crate::stream::open(core, socket, read_ahead, open))
}

/// The context id of a path, decoded and validated.
fn context_id(raw_id: &str) -> Result<String, Response> {
    let Some(id) = percent_decode(raw_id) else {
        return Err(Response::error(400, "invalid_id", "context id is not valid percent-encoded UTF-8"));
    };
    validate_id(&id)?;
    Ok(id)
}

/// Why a request without the API key is refused (`None`: it is a stream request whose
/// `token` opens that context's stream, `stream_token`).
fn stream_token_refusal(op: Op, req: &Request, core: &CoreCtx, raw_id: Option<&str>) -> Option<String> {
    const NO_KEY: &str = "missing or wrong API key";
    let (Op::Stream, Some(key)) = (op, &core.api_key) else { return Some(NO_KEY.into()) };
    let Some(token) = build::stream_token_param(req) else { return Some(NO_KEY.into()) };
    let Ok(id) = context_id(raw_id.unwrap_or_default()) else { return Some(NO_KEY.into()) };
    match stream_token::check(key.as_bytes(), &id, &token, unix_now_secs()) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `POST /v1/contexts/:id/stream-token {"ttl_secs": 300}` (the body is optional): a
/// token that opens this context's stream without the API key, for a browser's
/// `EventSource` or `WebSocket`, which cannot send it (`stream_token`). Without an
/// API key on the node every stream opens anyway; the token is still issued, so that
/// client code does not depend on the node's configuration.
fn stream_token(core: &CoreCtx, req: &Request, raw_id: &str) -> Response {
    let id = match context_id(raw_id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let ttl_secs = match build::stream_token_ttl(req) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let expires = unix_now_secs() + ttl_secs;
    let key = core.api_key.as_deref().unwrap_or("");
    let token = stream_token::issue(key.as_bytes(), &id, expires);
    let expires_at = chrono::DateTime::from_timestamp(expires as i64, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    Response::json(200, &json!({"token": token, "expires_at": expires_at, "ttl_secs": ttl_secs}))
}

fn unauthorized() -> Response {
    Response::error(401, "unauthorized", "missing or wrong API key")
}

fn health_ready(core: &CoreCtx) -> Response {
    if crate::shutdown::requested() {
        return Response::json(503, &json!({"status": "shutting_down"}));
    }
    let r = core.readiness();
    if r.ready() {
        return Response::json(200, &json!({"status": "ok"}));
    }
    let status = match () {
        _ if r.opened < r.total => "starting",
        _ if r.stopped > 0 => "shard_stopped",
        _ => "no_quorum",
    };
    let body = json!({"status": status, "shards_open": r.opened, "shards_with_leader": r.with_leader,
                      "shards_stopped": r.stopped, "shard_restarts": r.restarts, "shards": r.total});
    Response::json(503, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_in_any_case_and_keys_compared_whole() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("bearer k1"), Some("k1"));
        assert_eq!(bearer_token("BEARER  k1"), Some("k1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
