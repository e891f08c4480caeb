//! The route table: one match from a request's path segments and method to what it asks
//! for (`Op`). Dispatch, the request-counter label of `/metrics` and the latency
//! histogram of a route all come from here.

/// An operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    HealthLive,
    HealthReady,
    Metrics,
    AdminLatency,
    ClusterStatus,
    AddMember,
    RemoveMember,
    PutContext,
    GetContext,
    DeleteContext,
    PatchMetadata,
    Append,
    Replay,
    Tail,
    Window,
    Compact,
    Stream,
    StreamToken,
    OpenApi,
}

impl Op {
    /// `(label, histogram)`: the route label of the request counters and the latency
    /// histogram (`crate::metrics`; only context operations are timed).
    fn names(self) -> (&'static str, Option<&'static str>) {
        match self {
            Op::HealthLive | Op::HealthReady => ("health", None),
            Op::Metrics => ("metrics", None),
            Op::OpenApi => ("openapi", None),
            Op::AdminLatency => ("admin", None),
            Op::ClusterStatus => ("cluster", None),
            Op::AddMember | Op::RemoveMember => ("cluster_members", None),
            Op::PutContext => ("put_context", Some("http.put_context")),
            Op::GetContext => ("get_context", Some("http.get_context")),
            Op::DeleteContext => ("delete_context", Some("http.delete_context")),
            Op::PatchMetadata => ("patch_metadata", Some("http.patch_metadata")),
            Op::Append => ("append", Some("http.append")),
            Op::Replay => ("replay", Some("http.replay")),
            Op::Tail => ("tail", Some("http.tail")),
            Op::Window => ("window", Some("http.window")),
            Op::Compact => ("compact", Some("http.compact")),
            // A stream is not one latency: it is counted when it starts or is refused.
            Op::Stream => ("stream", None),
            Op::StreamToken => ("stream_token", None),
        }
    }

    pub fn label(self) -> &'static str {
        self.names().0
    }

    /// The latency histogram of a timed operation.
    pub fn histogram(self) -> Option<&'static str> {
        self.names().1
    }

    /// Stores what its body holds (a message, a summary, metadata): its large bodies
    /// count against the node's byte rate (`crate::api::byte_rate`).
    pub fn stores_body(self) -> bool {
        matches!(self, Op::PutContext | Op::PatchMetadata | Op::Append | Op::Compact)
    }

    /// Needs the API key (when the node has one): every `/v1` route.
    pub fn needs_auth(self) -> bool {
        !matches!(self, Op::HealthLive | Op::HealthReady | Op::Metrics | Op::OpenApi)
    }
}

/// What the table found for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// An operation; `param` is the path's variable segment (a context id or node id).
    Found { op: Op, param: Option<&'a str> },
    /// The path exists, the method does not: 405 (the label is the path's `GET`-like op).
    MethodNotAllowed { like: Op, param: Option<&'a str> },
    /// No such path: 404; `label` names the area it fell in.
    NotFound { label: &'static str, needs_auth: bool },
}

impl Resolved<'_> {
    /// The request-counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Resolved::Found { op, .. } | Resolved::MethodNotAllowed { like: op, .. } => op.label(),
            Resolved::NotFound { label, .. } => label,
        }
    }
}

/// The route table. `HEAD` is served wherever `GET` is.
pub fn resolve<'a>(segments: &[&'a str], method: &str) -> Resolved<'a> {
    use Op::*;
    let get = method == "GET" || method == "HEAD";
    // (the op a method asks for on this path, or None; the path's op for a 405 label)
    let (found, like, param): (Option<Op>, Op, Option<&'a str>) = match segments {
        ["health", "live"] => (get.then_some(HealthLive), HealthLive, None),
        ["health", "ready"] => (get.then_some(HealthReady), HealthReady, None),
        ["health", ..] => return Resolved::NotFound { label: "health", needs_auth: false },
        ["metrics"] => (get.then_some(Metrics), Metrics, None),
        ["v1", "openapi.json"] => (get.then_some(OpenApi), OpenApi, None),
        ["v1", "admin", "latency"] => (get.then_some(AdminLatency), AdminLatency, None),
        ["v1", "admin", ..] => return Resolved::NotFound { label: "admin", needs_auth: true },
        ["v1", "cluster"] => (get.then_some(ClusterStatus), ClusterStatus, None),
        ["v1", "cluster", "members"] => ((method == "POST").then_some(AddMember), AddMember, None),
        ["v1", "cluster", "members", id] => ((method == "DELETE").then_some(RemoveMember), RemoveMember, Some(*id)),
        ["v1", "cluster", "members", ..] => return Resolved::NotFound { label: "cluster_members", needs_auth: true },
        ["v1", "contexts", id] => {
            let op = match method {
                "PUT" => Some(PutContext),
                "DELETE" => Some(DeleteContext),
                _ if get => Some(GetContext),
                _ => None,
            };
            (op, GetContext, Some(*id))
        }
        ["v1", "contexts", id, "metadata"] => ((method == "PATCH").then_some(PatchMetadata), PatchMetadata, Some(*id)),
        ["v1", "contexts", id, "messages"] => {
            let op = match method {
                "POST" => Some(Append),
                _ if get => Some(Replay),
                _ => None,
            };
            (op, Replay, Some(*id))
        }
        ["v1", "contexts", id, "tail"] => (get.then_some(Tail), Tail, Some(*id)),
        ["v1", "contexts", id, "context"] => (get.then_some(Window), Window, Some(*id)),
        ["v1", "contexts", id, "compact"] => ((method == "POST").then_some(Compact), Compact, Some(*id)),
        // GET only: HEAD would ask for a stream without its body.
        ["v1", "contexts", id, "stream"] => ((method == "GET").then_some(Stream), Stream, Some(*id)),
        ["v1", "contexts", id, "stream-token"] => ((method == "POST").then_some(StreamToken), StreamToken, Some(*id)),
        ["v1", ..] => return Resolved::NotFound { label: "unknown", needs_auth: true },
        _ => return Resolved::NotFound { label: "unknown", needs_auth: false },
    };
    match found {
        Some(op) => Resolved::Found { op, param },
        None => Resolved::MethodNotAllowed { like, param },
    }
}

/// Every route as OpenAPI writes it (path template, methods; `HEAD` goes with `GET`,
/// except on `/stream`). `resolve` is the table; this list is checked against it and
/// against docs/openapi.yaml (tests below), so that neither can drift.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/health/live", &["GET"]),
    ("/health/ready", &["GET"]),
    ("/metrics", &["GET"]),
    ("/v1/openapi.json", &["GET"]),
    ("/v1/admin/latency", &["GET"]),
    ("/v1/cluster", &["GET"]),
    ("/v1/cluster/members", &["POST"]),
    ("/v1/cluster/members/{node_id}", &["DELETE"]),
    ("/v1/contexts/{id}", &["GET", "PUT", "DELETE"]),
    ("/v1/contexts/{id}/metadata", &["PATCH"]),
    ("/v1/contexts/{id}/messages", &["GET", "POST"]),
    ("/v1/contexts/{id}/tail", &["GET"]),
    ("/v1/contexts/{id}/context", &["GET"]),
    ("/v1/contexts/{id}/compact", &["POST"]),
    ("/v1/contexts/{id}/stream", &["GET"]),
    ("/v1/contexts/{id}/stream-token", &["POST"]),
];

/// The methods a path serves, for the `Allow` header of a 405 (`HEAD` with `GET`).
pub fn allowed_methods(segments: &[&str]) -> String {
    const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"];
    let allowed: Vec<&str> =
        METHODS.into_iter().filter(|m| matches!(resolve(segments, m), Resolved::Found { .. })).collect();
    allowed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, method: &str) -> Resolved<'static> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        let segments: Vec<&'static str> = path.trim_start_matches('/').split('/').collect();
        resolve(&segments, method)
    }

    #[test]
    fn every_route_resolves_with_its_label_and_histogram() {
        let cases = [
            ("/health/live", "GET", Op::HealthLive, "health"),
            ("/health/ready", "HEAD", Op::HealthReady, "health"),
            ("/metrics", "GET", Op::Metrics, "metrics"),
            ("/v1/openapi.json", "GET", Op::OpenApi, "openapi"),
            ("/v1/admin/latency", "GET", Op::AdminLatency, "admin"),
            ("/v1/cluster", "GET", Op::ClusterStatus, "cluster"),
            ("/v1/cluster/members", "POST", Op::AddMember, "cluster_members"),
            ("/v1/cluster/members/4", "DELETE", Op::RemoveMember, "cluster_members"),
            ("/v1/contexts/a", "PUT", Op::PutContext, "put_context"),
            ("/v1/contexts/a", "GET", Op::GetContext, "get_context"),
            ("/v1/contexts/a", "DELETE", Op::DeleteContext, "delete_context"),
            ("/v1/contexts/a/metadata", "PATCH", Op::PatchMetadata, "patch_metadata"),
            ("/v1/contexts/a/messages", "POST", Op::Append, "append"),
            ("/v1/contexts/a/messages", "GET", Op::Replay, "replay"),
            ("/v1/contexts/a/tail", "GET", Op::Tail, "tail"),
            ("/v1/contexts/a/context", "GET", Op::Window, "window"),
            ("/v1/contexts/a/compact", "POST", Op::Compact, "compact"),
            ("/v1/contexts/a/stream", "GET", Op::Stream, "stream"),
            ("/v1/contexts/a/stream-token", "POST", Op::StreamToken, "stream_token"),
        ];
        for (path, method, op, label) in cases {
            let r = at(path, method);
            assert!(matches!(r, Resolved::Found { op: o, .. } if o == op), "{method} {path}: {r:?}");
            assert_eq!(r.label(), label, "{method} {path}");
            let timed = path.starts_with("/v1/contexts/") && op != Op::Stream && op != Op::StreamToken;
            assert_eq!(op.histogram(), timed.then(|| format!("http.{label}")).as_deref(), "{method} {path}");
        }
    }

    #[test]
    fn the_route_list_is_the_route_table() {
        const METHODS: [&str; 5] = ["GET", "PUT", "POST", "PATCH", "DELETE"];
        for (template, methods) in ROUTES {
            let path = template.replace("{id}", "a").replace("{node_id}", "4");
            for m in METHODS {
                let found = matches!(at(&path, m), Resolved::Found { .. });
                assert_eq!(found, methods.contains(&m), "{m} {template}");
            }
        }
        // And nothing else resolves: every path of the table is in the list.
        let listed: Vec<String> =
            ROUTES.iter().map(|(t, _)| t.replace("{id}", "a").replace("{node_id}", "4")).collect();
        for probe in ["/v1/contexts/a/other", "/v1/other", "/v1/cluster/other", "/health/other", "/v1/admin/other"] {
            assert!(!listed.iter().any(|l| l == probe));
            assert!(matches!(at(probe, "GET"), Resolved::NotFound { .. }), "{probe}");
        }
    }

    #[test]
    fn wrong_methods_and_unknown_paths() {
        assert_eq!(at("/v1/contexts/a/tail", "POST"), Resolved::MethodNotAllowed { like: Op::Tail, param: Some("a") });
        assert_eq!(at("/metrics", "POST").label(), "metrics");
        assert_eq!(at("/health/other", "GET"), Resolved::NotFound { label: "health", needs_auth: false });
        assert_eq!(at("/v1/nothing", "GET"), Resolved::NotFound { label: "unknown", needs_auth: true });
        assert_eq!(at("/", "GET").label(), "unknown");
        assert_eq!(allowed_methods(&["v1", "contexts", "a"]), "GET, HEAD, PUT, DELETE");
        assert_eq!(allowed_methods(&["v1", "contexts", "a", "messages"]), "GET, HEAD, POST");
        assert_eq!(allowed_methods(&["v1", "cluster", "members"]), "POST");
        assert_eq!(allowed_methods(&["v1", "contexts", "a", "stream"]), "GET");
    }
}
