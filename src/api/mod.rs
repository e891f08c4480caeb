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

/// Answers one request.
pub async fn handle(req: Request, core: &CoreCtx) -> Response {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    let get = method == "GET" || method == "HEAD";
    match segments.as_slice() {
        ["health", "live"] if get => Response::json(200, &json!({"status": "ok"})),
        ["health", "ready"] if get => {
            let (ready, total) = core.readiness();
            if ready == total {
                Response::json(200, &json!({"status": "ok"}))
            } else {
                Response::json(503, &json!({"status": "starting", "shards_ready": ready, "shards": total}))
            }
        }
        ["health", "live" | "ready"] => method_not_allowed(method),
        ["v1", rest @ ..] => {
            if let Some(key) = &core.api_key {
                let ok = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).is_some_and(|k| k == key);
                if !ok {
                    return Response::error(401, "unauthorized", "missing or wrong API key");
                }
            }
            if rest == ["cluster"] {
                return if get { cluster(core).await } else { method_not_allowed(method) };
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
            match build_call(route, method, id, &req, &core.store_limits) {
                Ok(call) => core.route(call).await,
                Err(resp) => resp,
            }
        }
        _ => not_found(),
    }
}
