//! The v1 API: routes, input validation (`build`), and running calls on shards
//! (`calls`). `handle` is what the HTTP connection loop calls for every request.
pub mod build;
pub mod calls;

use serde_json::json;

use crate::http::{Request, Response, percent_decode};
use crate::shard::CoreCtx;
use build::{Route, build_call, validate_id};

fn not_found() -> Response {
    Response::error(404, "not_found", "no such route")
}

fn method_not_allowed(method: &str) -> Response {
    Response::error(405, "method_not_allowed", format!("{method} is not allowed here"))
}

/// `GET /v1/cluster`: this node's view, per shard its leader, term and commit index.
async fn cluster(core: &CoreCtx) -> Response {
    let calls = (0..core.shard_count).map(|s| core.route_to_shard(s, calls::ShardCall::ShardStatus { shard: s }));
    let mut shards = Vec::new();
    for resp in futures_util::future::join_all(calls).await {
        match serde_json::from_slice::<serde_json::Value>(&resp.body) {
            Ok(v) if resp.status == 200 => shards.push(v),
            _ => return resp,
        }
    }
    let members: std::collections::BTreeSet<u64> = shards
        .iter()
        .flat_map(|s| s["voters"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .collect();
    Response::json(200, &json!({"node_id": core.node_id, "members": members, "shards": shards}))
}

/// Runs one membership change on every shard (each on its leader) and reports them.
async fn change_all_shards(core: &CoreCtx, make: impl Fn(u32) -> calls::ShardCall, node_id: u64) -> Response {
    let calls = (0..core.shard_count).map(|s| core.route_to_shard(s, make(s)));
    for resp in futures_util::future::join_all(calls).await {
        if resp.status != 200 {
            return resp;
        }
    }
    Response::json(200, &json!({"node_id": node_id, "shards": core.shard_count}))
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
    let make = |s| calls::ShardCall::AddMember { shard: s, node_id, addr: addr.to_owned() };
    change_all_shards(core, make, node_id).await
}

/// `DELETE /v1/cluster/members/:node_id`.
async fn remove_member(core: &CoreCtx, raw_id: &str) -> Response {
    let Some(node_id) = raw_id.parse::<u64>().ok().filter(|&n| n > 0) else {
        return Response::error(400, "invalid_id", "node id must be an integer > 0");
    };
    change_all_shards(core, |s| calls::ShardCall::RemoveMember { shard: s, node_id }, node_id).await
}

/// The route label of a request for the request counters (`/metrics`).
fn route_label(segments: &[&str], method: &str) -> &'static str {
    match segments {
        ["health", ..] => "health",
        ["metrics"] => "metrics",
        ["v1", "admin", ..] => "admin",
        ["v1", "cluster"] => "cluster",
        ["v1", "cluster", "members", ..] => "cluster_members",
        ["v1", "contexts", _] => Route::Context.histogram(method).trim_start_matches("http."),
        ["v1", "contexts", _, "metadata"] => "patch_metadata",
        ["v1", "contexts", _, "messages"] => Route::Messages.histogram(method).trim_start_matches("http."),
        ["v1", "contexts", _, "tail"] => "tail",
        ["v1", "contexts", _, "context"] => "window",
        ["v1", "contexts", _, "compact"] => "compact",
        _ => "unknown",
    }
}

/// `GET /metrics`: Prometheus text (no API key, like `/health/*`).
async fn metrics(core: &CoreCtx) -> Response {
    let crate::metrics::Snapshot { counters, histograms: hists } = core.collect_metrics(false).await;
    let calls = (0..core.shard_count).map(|s| core.route_to_shard(s, calls::ShardCall::ShardStatus { shard: s }));
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
        disk_free_bytes: crate::shard::disk::free_bytes(&core.data_dir).ok(),
        disk_reserve_bytes: core.disk_reserve_bytes(),
    };
    let body = crate::metrics::prometheus::render(&node, &counters, &hists, &shards);
    Response::text(200, body, "text/plain; version=0.0.4; charset=utf-8")
}

/// Answers one request, and counts it by route and status.
pub async fn handle(req: Request, core: &CoreCtx) -> Response {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let label = route_label(&segments, req.method.as_str());
    let resp = route(&req, &segments, core).await;
    crate::metrics::count_request(label, resp.status);
    resp
}

async fn route(req: &Request, segments: &[&str], core: &CoreCtx) -> Response {
    let method = req.method.as_str();
    let get = method == "GET" || method == "HEAD";
    match segments {
        ["health", "live"] if get => Response::json(200, &json!({"status": "ok"})),
        ["health", "ready"] if get => {
            let r = core.readiness();
            if r.ready() {
                Response::json(200, &json!({"status": "ok"}))
            } else {
                let status = match () {
                    _ if r.opened < r.total => "starting",
                    _ if r.stopped > 0 => "shard_stopped",
                    _ => "no_quorum",
                };
                let body = json!({"status": status, "shards_open": r.opened, "shards_with_leader": r.with_leader,
                                  "shards_stopped": r.stopped, "shards": r.total});
                Response::json(503, &body)
            }
        }
        ["health", "live" | "ready"] => method_not_allowed(method),
        ["metrics"] if get => metrics(core).await,
        ["metrics"] => method_not_allowed(method),
        ["v1", rest @ ..] => {
            if let Some(key) = &core.api_key {
                let ok = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).is_some_and(|k| k == key);
                if !ok {
                    return Response::error(401, "unauthorized", "missing or wrong API key");
                }
            }
            match (rest, method) {
                (["admin", "latency"], "GET" | "HEAD") => {
                    let hists = core.collect_metrics(false).await.histograms;
                    let body = json!({"node_id": core.node_id, "unit": "us", "histograms": crate::metrics::percentiles_json(&hists)});
                    return Response::json(200, &body);
                }
                (["admin", "latency"], _) => return method_not_allowed(method),
                (["cluster"], "GET" | "HEAD") => return cluster(core).await,
                (["cluster"], _) => return method_not_allowed(method),
                (["cluster", "members"], "POST") => return add_member(core, req).await,
                (["cluster", "members"], _) => return method_not_allowed(method),
                (["cluster", "members", id], "DELETE") => return remove_member(core, id).await,
                (["cluster", "members", _], _) => return method_not_allowed(method),
                _ => {}
            }
            let (raw_id, route) = match rest {
                ["contexts", id] => (*id, Route::Context),
                ["contexts", id, "metadata"] => (*id, Route::Metadata),
                ["contexts", id, "messages"] => (*id, Route::Messages),
                ["contexts", id, "tail"] => (*id, Route::Tail),
                ["contexts", id, "context"] => (*id, Route::Window),
                ["contexts", id, "compact"] => (*id, Route::Compact),
                _ => return not_found(),
            };
            let Some(id) = percent_decode(raw_id) else {
                return Response::error(400, "invalid_id", "context id is not valid percent-encoded UTF-8");
            };
            if let Err(resp) = validate_id(&id) {
                return resp;
            }
            let started = std::time::Instant::now();
            let resp = match build_call(route, method, id, req, &core.store_limits) {
                Ok(call) => core.route(call, started).await,
                Err(resp) => resp,
            };
            crate::metrics::record_since(route.histogram(method), started);
            resp
        }
        _ => not_found(),
    }
}
