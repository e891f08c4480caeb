//! A real cluster of `fleetlm` processes on loopback: node i has its own HTTP port,
//! peer port(s) and data dir; nodes can be killed (SIGKILL) and started again.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Resp, free_ports, msg_body, try_request, try_request_full};

/// The cluster secret of every test cluster's nodes.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

pub struct Node {
    pub id: u64,
    /// Executors of this node.
    pub cores: usize,
    pub http_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    /// More `fleetlm serve` flags for this node alone (used from its next start on).
    pub args: Vec<String>,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// `--peers` of the initial members.
    peers: String,
    cores: usize,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes (`cores` executors each) with data under `dir` and waits until
    /// every one is ready.
    pub fn start(dir: &Path, n: u64, cores: usize, extra: &[&str]) -> Cluster {
        Cluster::start_mixed(dir, &vec![cores; n as usize], extra)
    }

    /// Starts one node per entry of `cores` (its executor count).
    pub fn start_mixed(dir: &Path, cores_per_node: &[usize], extra: &[&str]) -> Cluster {
        let cores = cores_per_node.iter().copied().max().unwrap_or(1);
        let mut nodes = Vec::new();
        for (i, &node_cores) in cores_per_node.iter().enumerate() {
            let id = i as u64 + 1;
            nodes.push(Node {
                id,
                cores: node_cores,
                http_port: free_ports(1),
                peer_port: free_ports(node_cores as u16),
                dir: dir.join(format!("node{id}")),
                args: Vec::new(),
                child: None,
            });
        }
        let peers = nodes.iter().map(|n| format!("{}=127.0.0.1:{}", n.id, n.peer_port)).collect::<Vec<_>>().join(",");
        let mut c = Cluster { nodes, peers, cores, extra: extra.iter().map(|s| s.to_string()).collect() };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        for i in 0..c.nodes.len() {
            c.wait_ready(i);
        }
        c
    }

    /// Adds a node that is not an initial member (it waits to be added); returns its index.
    pub fn spawn_extra(&mut self, dir: &Path) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(Node {
            id,
            cores: self.cores,
            http_port: free_ports(1),
            peer_port: free_ports(self.cores as u16),
            dir: dir.join(format!("node{id}")),
            args: Vec::new(),
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        while try_request(self.nodes[i].http_port, "GET", "/health/live").is_none_or(|r| r.status != 200) {
            assert!(Instant::now() < deadline, "node {id} did not come up:\n{}", self.log(i));
            std::thread::sleep(Duration::from_millis(50));
        }
        i
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.with_extension("log")).unwrap_or_default()
    }

    /// Starts node `i` (again, on its data) without waiting.
    pub fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fleetlm"))
            .arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", node.http_port)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", node.peer_port)])
            .args(["--peers", &self.peers])
            .args(["--cluster-secret", CLUSTER_SECRET])
            .args(["--cores", &node.cores.to_string(), "--shards", "4"])
            .args(["--segment-size-bytes", "8388608", "--body-segment-size-bytes", "4194304"])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(&self.extra)
            .args(&node.args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fleetlm");
        self.nodes[i].child = Some(child);
    }

    /// Waits until node `i` answers `/health/ready` with 200.
    pub fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if try_request(self.nodes[i].http_port, "GET", "/health/ready").is_some_and(|r| r.status == 200) {
                return;
            }
            if let Some(status) = self.nodes[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("node {} exited ({status}); log:\n{}", self.nodes[i].id, self.log(i));
            }
            assert!(Instant::now() < deadline, "node {} not ready; log:\n{}", self.nodes[i].id, self.log(i));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT node `i`: a node that holds its connections and
    /// answers nothing, like one cut off from the network.
    pub fn signal(&self, i: usize, pause: bool) {
        if let Some(c) = &self.nodes[i].child {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM to node `i`: a graceful stop (`--shutdown-grace-ms`).
    pub fn terminate(&self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Whether node `i`'s process has exited (or was never started).
    pub fn exited(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    pub fn req(&self, i: usize, method: &str, path: &str, body: &str) -> Option<Resp> {
        try_request_full(self.nodes[i].http_port, method, path, &[], body.as_bytes())
    }

    pub fn req_h(&self, i: usize, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<Resp> {
        try_request_full(self.nodes[i].http_port, method, path, headers, body.as_bytes())
    }

    /// `GET /v1/cluster` of node `i`.
    pub fn view(&self, i: usize) -> serde_json::Value {
        self.req(i, "GET", "/v1/cluster", "").expect("cluster view").json()
    }

    /// Polls `f` every 50 ms until it holds or `secs` pass.
    pub fn eventually(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

// Helpers of the cluster tests (tests/cluster*.rs).

/// A fresh directory, removed when the test ends; kept when it fails, for its logs.
/// (Declared before the cluster, so the nodes are killed before it goes.)
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn path(&self) -> &std::path::Path {
        self.0.as_ref().expect("present until drop").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && std::thread::panicking()
        {
            eprintln!("test data kept in {}", dir.keep().display());
        }
    }
}

pub fn tmp(name: &str) -> TestDir {
    TestDir(Some(tempfile::Builder::new().prefix(&format!("fleetlm-cluster-{name}-")).tempdir().unwrap()))
}

pub fn put(c: &Cluster, node: usize, id: &str) {
    let r = c.req(node, "PUT", &format!("/v1/contexts/{id}"), r#"{"token_budget":100000}"#).expect("answer");
    assert!(r.status == 201 || r.status == 200, "PUT {id}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
}

/// A linearizable read of every message of `id` through `node`, retried while it is
/// not answered with 200 for up to `secs` (a 503 while leaders move after a restart or
/// a balancing round is allowed; the data it finally shows is what the test checks).
pub fn messages_settled(c: &Cluster, node: usize, id: &str, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = messages(c, node, id, false) {
            return m;
        }
        assert!(Instant::now() < deadline, "node {node} answered no read of {id} in {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// All messages of `id` as node `node` sees them (`local`: its own replica).
pub fn messages(c: &Cluster, node: usize, id: &str, local: bool) -> Option<Vec<Value>> {
    let q = if local { "&consistency=local" } else { "" };
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let r = c.req(node, "GET", &format!("/v1/contexts/{id}/messages?from_seq={from}&limit=1000{q}"), "")?;
        if r.status != 200 {
            return None;
        }
        let j = r.json();
        let page = j["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return Some(out);
        }
        from = j["next_seq"].as_u64().unwrap();
        out.extend(page);
    }
}

pub fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["parts"][0]["text"].as_str().unwrap().to_owned()).collect()
}

/// Shard → leader id, as node `node` sees it.
pub fn leaders(c: &Cluster, node: usize) -> Vec<Option<u64>> {
    c.view(node)["shards"].as_array().unwrap().iter().map(|s| s["leader"].as_u64()).collect()
}

/// Appends with an Idempotency-Key, retrying on 503 and dead connections (through
/// `nodes` in turn) until acknowledged or `secs` pass. Returns the seq.
pub fn append_acked(c: &Cluster, nodes: &[usize], id: &str, text: &str, secs: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let body = msg_body(text);
    let mut turn = 0;
    while Instant::now() < deadline {
        let node = nodes[turn % nodes.len()];
        turn += 1;
        let port = c.nodes[node].http_port;
        let path = format!("/v1/contexts/{id}/messages");
        match try_request_full(port, "POST", &path, &[("Idempotency-Key", text)], body.as_bytes()) {
            Some(r) if r.status == 201 => return r.json()["seq"].as_u64(),
            Some(r) if r.status == 503 => assert!(r.header("retry-after").is_some(), "503 without Retry-After"),
            Some(r) => panic!("append {text}: {} {:?}", r.status, String::from_utf8_lossy(&r.body)),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
