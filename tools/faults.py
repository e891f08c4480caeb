#!/usr/bin/env python3
"""faults: a seeded fault-injection run against a local FleetLM cluster, with a client
history and a checker (Jepsen's method: clients record what they did and what they were
told; a nemesis injects faults and heals them; a checker compares the history with what
every replica holds at the end).

Run by bench/faults.sh (which builds the binaries); needs root (network namespaces, a
tmpfs mount). Everything it makes is its own: one network namespace per node on a bridge
of its own (10.77.N.0/24, N from the process id), the nodes' data under --dir, a tmpfs
for the full-disk node.
It removes them all at the end, and stops by itself after --seconds.

Faults (each injected, held, then healed; the schedule of kinds, targets and durations
comes from the seed alone):
  kill        SIGKILL one node, restart it after 0.5-2 s
  kill2       SIGKILL two nodes at once (no quorum: no write may be acknowledged), restart
  kill_leader SIGKILL the node leading the most shards, restart
  pause       SIGSTOP one node for 1-5 s
  partition   cut one node's link (clients and peers) for 1-5 s
  disk        fill the data filesystem of the last node for 2-5 s (it refuses writes)
  torn        SIGKILL one node, append garbage after its WAL's last record (a torn,
              unsynced write), restart
  stop        SIGTERM the node leading the most shards (a graceful stop: it hands its
              shards over, refuses replication, exits after its 1 s grace), restart; a
              node still running 10 s after the signal fails the run
Writers append to --contexts contexts, one writer per (context, node), each through its
node only (so a node that does not answer stalls its own writers and no others); half of
them use Idempotency-Key and retry an unknown outcome with the same key. Client timeout
2.5 s (the server's write deadline is 2 s), 0.5 s to connect. The checker then reads every context from every
node (consistency=local, after all replicas agree) and linearizably, and counts:
acknowledged appends lost, duplicated, phantom (never attempted), definite failures
present, acknowledged at another seq than the one answered, reordered against real time,
replicas that diverge, and acknowledgements without a quorum; and, per fault kind, the
longest unavailability and recovery, per context: a context is unavailable from the injection until
an append to it that was sent after the injection is acknowledged (client timeouts on a
paused or cut-off node count). Exit status 1 if any counter is non-zero.
"""
import argparse
import http.client
import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

KINDS = ["kill", "kill2", "kill_leader", "pause", "partition", "disk", "torn", "stop"]
WEIGHTS = {"kill": 3, "kill2": 1, "kill_leader": 3, "pause": 3, "partition": 3, "disk": 1, "torn": 2, "stop": 2}
# Names and addresses of this run's network, unique per process so that two runs can
# share a machine (set by `set_net`).
NET_ID = os.getpid() % 200 + 20
BRIDGE = f"flf{NET_ID}br"
SUBNET = f"10.77.{NET_ID}"
HTTP_PORT = 4000
PEER_PORT = 5000


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


class Node:
    def __init__(self, i, args, secret, peers):
        self.i = i
        self.ns = f"flf{NET_ID}n{i}"
        self.veth = f"flf{NET_ID}v{i}"
        self.ip = f"{SUBNET}.{i}"
        self.dir = os.path.join(args.dir, f"node{i}")
        self.log = os.path.join(args.dir, f"node{i}.log")
        self.args = args
        self.secret = secret
        self.peers = peers
        self.proc = None
        self.paused = False

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        cmd = ["ip", "netns", "exec", self.ns, self.args.bin, "serve", "--node-id", str(self.i),
               "--listen", f"{self.ip}:{HTTP_PORT}", "--peer-listen", f"{self.ip}:{PEER_PORT}",
               "--peers", self.peers, "--cores", "1", "--shards", str(self.args.shards),
               "--segment-size-bytes", "8388608", "--body-segment-size-bytes", "4194304",
               "--data-dir", self.dir]
        env = dict(os.environ, FLEETLM_CLUSTER_SECRET=self.secret)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def kill9(self):
        if self.proc:
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.paused = False
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self, within_s=10.0):
        """SIGTERM; True if the process exited by itself within `within_s` (else it is
        killed)."""
        if not self.proc:
            return True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=within_s)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        self.kill9()
        return exited

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def request(ip, method, path, body=None, headers=None, timeout=2.5):
    """(status, json or None, error kind): error kind is None, 'refused' (never sent) or 'io'.
    Connecting has 0.5 s (a cut-off node drops the SYN), the answer `timeout`."""
    conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=timeout)
    try:
        try:
            conn.sock = socket.create_connection((ip, HTTP_PORT), timeout=0.5)
            conn.sock.settimeout(timeout)
        except (socket.timeout, ConnectionRefusedError):
            return None, None, "refused"  # nothing was sent
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None, None
        except ValueError:
            return r.status, None, None
    except ConnectionRefusedError:
        return None, None, "refused"
    except (OSError, http.client.HTTPException):
        return None, None, "io"
    finally:
        conn.close()


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []

    def add(self, op):
        with self.lock:
            self.ops.append(op)


def classify(status, body, err):
    """ok / fail (certainly not applied) / unknown."""
    if status == 201:
        return "ok"
    if err == "refused":
        return "fail"
    if err == "io" or status is None:
        return "unknown"
    if status == 503:
        msg = (body or {}).get("message", "")
        # Said when the write may have been proposed (README: only Idempotency-Key makes a
        # retry safe); other 503s are refusals before anything was proposed.
        return "unknown" if ("unknown" in msg or "may" in msg) else "fail"
    return "fail"


def writer(w, node, ctx, history, stop, keyed):
    """Appends to `ctx` through `node` only, one at a time: a writer per (context, node),
    so that a node that does not answer stalls its own writers and no others."""
    n = 0
    while not stop.is_set():
        n += 1
        text = f"w{w}-op{n}"
        body = json.dumps({"message": {"role": "user", "parts": [{"type": "text", "text": text}]}})
        key = f"k-{text}" if keyed else None
        started = time.time()
        deadline = started + 30
        attempts = 0
        while True:
            headers = {"Content-Type": "application/json"}
            if key:
                headers["Idempotency-Key"] = key
            status, resp, err = request(node.ip, "POST", f"/v1/contexts/{ctx}/messages", body, headers)
            attempts += 1
            outcome = classify(status, resp, err)
            # A keyed write is retried (same key) until its outcome is known; an unkeyed
            # one is tried once.
            if not keyed or outcome == "ok" or time.time() > deadline or stop.is_set():
                break
            time.sleep(0.05)
        op = {"writer": w, "ctx": ctx, "text": text, "keyed": keyed, "start": started, "end": time.time(),
              "outcome": outcome, "status": status, "node": node.i, "attempts": attempts}
        if outcome == "ok":
            op["seq"], op["version"] = resp["seq"], resp["version"]
        elif resp:
            op["message"] = resp.get("message")
        history.add(op)
        # Paced: a long run must not fill the disks (every message stays on every node).
        time.sleep(0.02)


def wait_ready(nodes, secs=60):
    deadline = time.time() + secs
    for n in nodes:
        while True:
            status, _, _ = request(n.ip, "GET", "/health/ready", timeout=2)
            if status == 200:
                break
            if time.time() > deadline:
                return False
            time.sleep(0.1)
    return True


def leader_counts(nodes):
    for n in nodes:
        if not n.alive() or n.paused:
            continue
        status, body, _ = request(n.ip, "GET", "/v1/cluster", timeout=2)
        if status == 200:
            counts = {}
            for s in body["shards"]:
                if s.get("leader"):
                    counts[s["leader"]] = counts.get(s["leader"], 0) + 1
            return counts
    return {}


def tear_wal_tail(node, rng, wal_inspect):
    """Appends garbage after the last valid record of one of the node's WALs (node
    stopped): one log per core in `wal-<cores>/<core>/` (data dir format 3), or one per
    shard in `shards/<s>/wal/` (format 2). Returns (torn?, what was done or why not)."""
    logs = sorted(glob.glob(os.path.join(node.dir, "wal-*", "*"))) or \
        sorted(glob.glob(os.path.join(node.dir, "shards", "*", "wal")))
    logs = [d for d in logs if os.path.isdir(d) and not d.endswith(".tmp")]
    if not logs:
        return False, "no WAL directory found"
    wal = logs[rng.randrange(len(logs))]
    out = sh(wal_inspect, wal, check=False).stdout
    end = [l for l in out.splitlines() if l.startswith("valid end:")]
    if not end:
        return False, f"wal-inspect found no valid end in {wal}: {out[-200:]}"
    # "valid end: segment FILE offset N"
    parts = end[0].split()
    path, offset = os.path.join(wal, parts[3]), int(parts[5])
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(8, 200))))
    return True, f"{os.path.relpath(wal, node.dir)}: garbage at {parts[3]}+{offset}"


def setup_network(nodes):
    teardown_network(nodes)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for n in nodes:
        sh("ip", "netns", "add", n.ns)
        sh("ip", "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
        sh("ip", "link", "set", n.veth, "master", BRIDGE)
        sh("ip", "link", "set", n.veth, "up")
        sh("ip", "netns", "exec", n.ns, "ip", "addr", "add", f"{n.ip}/24", "dev", "eth0")
        sh("ip", "netns", "exec", n.ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", n.ns, "ip", "link", "set", "lo", "up")


def teardown_network(nodes):
    for n in nodes:
        sh("ip", "netns", "del", n.ns, check=False)
        sh("ip", "link", "del", n.veth, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def read_all(node, ctx, local):
    """Every message of ctx as node holds it: [(seq, text)] or None."""
    out, frm = [], 1
    q = "&consistency=local" if local else ""
    while True:
        status, body, err = request(node.ip, "GET", f"/v1/contexts/{ctx}/messages?from_seq={frm}&limit=1000{q}", timeout=30)
        if status != 200:
            read_all.last_error = (node.i, status, err, (body or {}).get("message"))
            return None
        page = body["messages"]
        if not page:
            return out
        out.extend((m["seq"], m["parts"][0]["text"]) for m in page)
        frm = body["next_seq"]


def check(history, nodes, contexts, faults, log):
    c = {k: 0 for k in ["lost", "duplicated", "phantom", "definite_failures_present", "wrong_seq",
                        "reordered", "replicas_diverge", "acked_without_quorum", "unreadable"]}
    by_text = {op["text"]: op for op in history.ops}
    for ctx in contexts:
        truth = None
        deadline = time.time() + 60
        while truth is None and time.time() < deadline:
            truth = read_all(nodes[0], ctx, local=False)
            if truth is None:
                time.sleep(0.5)
        if truth is None:
            c["unreadable"] += 1
            log(f"  {ctx}: no linearizable read from node 1 in 60 s; the last answer: {getattr(read_all, 'last_error', None)}")
            for n in nodes:
                st, b, _ = request(n.ip, "GET", "/v1/cluster", timeout=5)
                shards = [(s["leader"], s["term"], s["state"][:4], s["commit_index"], s["applied_index"]) for s in b["shards"]] if st == 200 else st
                other = read_all(n, ctx, local=False)
                log(f"    node {n.i}: shards {shards}; its linearizable read: "
                    f"{'ok' if other is not None else getattr(read_all, 'last_error', None)}")
            continue
        # Every replica, once it has applied as much as the leader's view.
        for n in nodes:
            deadline = time.time() + 60
            while True:
                local = read_all(n, ctx, local=True)
                if local == truth or time.time() > deadline:
                    break
                time.sleep(0.2)
            if local != truth:
                c["replicas_diverge"] += 1
                log(f"  {ctx}: node {n.i} holds {len(local or [])} messages, the leader {len(truth)}")
        seen = {}
        for seq, text in truth:
            seen.setdefault(text, []).append(seq)
        for text, seqs in seen.items():
            if len(seqs) > 1:
                c["duplicated"] += 1
                log(f"  {ctx}: {text} at seqs {seqs}")
            op = by_text.get(text)
            if op is None:
                c["phantom"] += 1
                log(f"  {ctx}: {text} was never attempted")
            elif op["outcome"] == "fail":
                c["definite_failures_present"] += 1
                log(f"  {ctx}: {text} failed definitely ({op.get('status')} {op.get('message')}) yet is at {seqs}")
        ok = [op for op in history.ops if op["ctx"] == ctx and op["outcome"] == "ok"]
        for op in ok:
            seqs = seen.get(op["text"])
            if not seqs:
                c["lost"] += 1
                log(f"  {ctx}: acknowledged {op['text']} (seq {op['seq']}) is missing")
            elif seqs[0] != op["seq"]:
                c["wrong_seq"] += 1
                log(f"  {ctx}: {op['text']} acknowledged at seq {op['seq']}, stored at {seqs}")
        # Real time: an append acknowledged before another was sent has the lower seq.
        ok.sort(key=lambda o: o["end"])
        by_start = sorted(ok, key=lambda o: o["start"])
        j, best = 0, 0
        for op in by_start:
            while j < len(ok) and ok[j]["end"] < op["start"]:
                best = max(best, ok[j]["seq"])
                j += 1
            if best and op["seq"] <= best:
                c["reordered"] += 1
                log(f"  {ctx}: {op['text']} (seq {op['seq']}) sent after seq {best} was acknowledged")
    # No quorum: nothing sent after both kills and answered before the restart is acknowledged.
    for f in faults:
        if f["kind"] == "kill2" and "down_from" in f:
            for op in history.ops:
                if op["outcome"] == "ok" and op["start"] > f["down_from"] and op["end"] < f["down_until"]:
                    c["acked_without_quorum"] += 1
                    log(f"  {op['text']} acknowledged while two of three nodes were down")
    return c


def windows(history, faults, contexts):
    """Per fault kind, the longest time a context went without an acknowledged append:
    from the injection to the first append to that context sent after it through a node
    the fault did not touch and acknowledged (and from the heal, through any node); the
    maximum over contexts and faults."""
    import bisect
    by_ctx = {}
    for op in history.ops:
        if op["outcome"] == "ok":
            by_ctx.setdefault(op["ctx"], []).append((op["start"], op["end"], op["node"]))
    for v in by_ctx.values():
        v.sort()
    out = {}

    def first_ack_after(ctx, t, avoid):
        ops = by_ctx.get(ctx, [])
        i = bisect.bisect_left(ops, (t, 0, 0))
        ends = [e for _, e, node in ops[i:i + 200] if node not in avoid]
        return min(ends) if ends else None

    for f in faults:
        w = out.setdefault(f["kind"], {"count": 0, "unavailable_max_s": 0.0, "recovery_max_s": 0.0})
        w["count"] += 1
        hit = f.get("node")
        avoid = set(hit) if isinstance(hit, list) else {hit}
        for ctx in contexts:
            # Through the nodes the fault did not touch (a client of the faulted node
            # waits for its own timeout, whatever the cluster does).
            a = first_ack_after(ctx, f["injected"], avoid)
            h = first_ack_after(ctx, f["healed"], set())
            if a is not None:
                w["unavailable_max_s"] = max(w["unavailable_max_s"], round(a - f["injected"], 3))
            if h is not None:
                w["recovery_max_s"] = max(w["recovery_max_s"], round(h - f["healed"], 3))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--wal-inspect", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--contexts", type=int, default=6, help="each written through every node")
    ap.add_argument("--faults", default=",".join(KINDS))
    ap.add_argument("--out", default=None, help="write the report (JSON) here")
    ap.add_argument("--monitor", action="store_true", help="log every node's view of the shards (monitor.jsonl)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"faults: seed {seed} ({args.seconds:.0f} s, {args.nodes} nodes, faults {args.faults})", flush=True)
    rng = random.Random(seed)
    kinds = [k for k in args.faults.split(",") if k]
    assert all(k in KINDS for k in kinds), f"unknown fault in {kinds}"
    if args.nodes < 3:
        kinds = [k for k in kinds if k != "kill2"]
    os.makedirs(args.dir, exist_ok=True)
    secret = "faults-" + "%032x" % rng.getrandbits(128)
    peers = ",".join(f"{i}={SUBNET}.{i}:{PEER_PORT}" for i in range(1, args.nodes + 1))
    nodes = [Node(i, args, secret, peers) for i in range(1, args.nodes + 1)]
    disk_node = nodes[-1]
    mounted = False
    logf = open(os.path.join(args.dir, "faults.log"), "w")

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        logf.write(line + "\n")
        logf.flush()
        if args.out is None or "  " not in msg[:2]:
            print(line, flush=True)

    stop = threading.Event()
    history = History()
    faults = []
    try:
        setup_network(nodes)
        if "disk" in kinds:
            os.makedirs(disk_node.dir, exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", "size=3g", "tmpfs", disk_node.dir)
            mounted = True
        for n in nodes:
            n.start()
        if not wait_ready(nodes, 90):
            raise SystemExit("the cluster did not become ready")
        contexts = [f"f{seed}-c{k}" for k in range(args.contexts)]
        for ctx in contexts:
            while request(nodes[0].ip, "PUT", f"/v1/contexts/{ctx}", json.dumps({"token_budget": 10 ** 9}))[0] not in (200, 201):
                time.sleep(0.2)
        threads = []
        for k, ctx in enumerate(contexts):
            for n in nodes:
                # Every context through every node; keyed and unkeyed writers alternate.
                w = len(threads)
                t = threading.Thread(target=writer, args=(w, n, ctx, history, stop, w % 2 == 0), daemon=True)
                t.start()
                threads.append(t)
        if args.monitor:
            def monitor():
                with open(os.path.join(args.dir, "monitor.jsonl"), "w") as fh:
                    while not stop.is_set():
                        row = {"t": time.time()}
                        for n in nodes:
                            if n.alive() and not n.paused:
                                st, b, _ = request(n.ip, "GET", "/v1/cluster", timeout=0.5)
                                if st == 200:
                                    row[n.i] = [(s["leader"], s["term"], s["state"][:4], s["commit_index"], s["applied_index"]) for s in b["shards"]]
                        fh.write(json.dumps(row) + "\n")
                        time.sleep(0.25)
            threading.Thread(target=monitor, daemon=True).start()
        started = time.time()
        while time.time() - started < args.seconds:
            kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
            hold = round(rng.uniform(1, 5) if kind in ("pause", "partition") else rng.uniform(2, 5) if kind == "disk"
                         else rng.uniform(0.5, 2), 2)
            pick = rng.randrange(args.nodes)
            pick2 = (pick + 1 + rng.randrange(args.nodes - 1)) % args.nodes
            f = {"kind": kind, "hold_s": hold}
            if kind == "kill":
                n = nodes[pick]
                f["injected"] = time.time(); n.kill9(); time.sleep(hold); n.start(); f["node"] = n.i
            elif kind == "torn":
                n = nodes[pick]
                f["injected"] = time.time(); n.kill9()
                f["torn_ok"], f["torn"] = tear_wal_tail(n, rng, args.wal_inspect)
                time.sleep(hold); n.start(); f["node"] = n.i
            elif kind == "kill_leader":
                counts = leader_counts(nodes)
                target = max(counts, key=counts.get) if counts else nodes[pick].i
                n = nodes[target - 1]
                f["injected"] = time.time(); n.kill9(); time.sleep(hold); n.start(); f["node"] = n.i
            elif kind == "stop":
                counts = leader_counts(nodes)
                target = max(counts, key=counts.get) if counts else nodes[pick].i
                n = nodes[target - 1]
                f["injected"] = time.time(); f["stopped_cleanly"] = n.stop()
                time.sleep(hold); n.start(); f["node"] = n.i
            elif kind == "kill2":
                a, b = nodes[pick], nodes[pick2]
                f["injected"] = time.time(); a.kill9(); b.kill9(); f["down_from"] = time.time()
                time.sleep(hold)
                f["down_until"] = time.time(); a.start(); b.start(); f["node"] = [a.i, b.i]
            elif kind == "pause":
                n = nodes[pick]
                f["injected"] = time.time(); os.kill(n.proc.pid, signal.SIGSTOP); n.paused = True
                time.sleep(hold)
                os.kill(n.proc.pid, signal.SIGCONT); n.paused = False; f["node"] = n.i
            elif kind == "partition":
                n = nodes[pick]
                f["injected"] = time.time(); sh("ip", "link", "set", n.veth, "down")
                time.sleep(hold)
                sh("ip", "link", "set", n.veth, "up"); f["node"] = n.i
            elif kind == "disk":
                n = disk_node
                st = os.statvfs(n.dir)
                fill = max(0, st.f_bavail * st.f_frsize - (1 << 20))
                path = os.path.join(n.dir, "fill")
                f["injected"] = time.time()
                with open(path, "wb") as fh:
                    # The node writes meanwhile: take what is left if the first size no
                    # longer fits.
                    while fill > 0:
                        try:
                            os.posix_fallocate(fh.fileno(), 0, fill)
                            break
                        except OSError:
                            fill -= 1 << 20
                time.sleep(hold)
                os.unlink(path); f["node"] = n.i
            f["healed"] = time.time()
            faults.append(f)
            log(f"fault {len(faults)}: {kind} node {f.get('node')} for {hold} s" + (f" ({f['torn']})" if "torn" in f else ""))
            if not wait_ready(nodes, 60):
                log("the cluster did not recover within 60 s")
                f["no_recovery"] = True
            time.sleep(rng.uniform(0.2, 1.0))
        stop.set()
        for t in threads:
            t.join(timeout=40)
        if not wait_ready(nodes, 60):
            log("not ready at the end")
        with open(os.path.join(args.dir, "history.jsonl"), "w") as fh:
            for op in history.ops:
                fh.write(json.dumps(op) + "\n")
        with open(os.path.join(args.dir, "faults.jsonl"), "w") as fh:
            for f in faults:
                fh.write(json.dumps(f) + "\n")
        counters = check(history, nodes, contexts, faults, log)
        counters["no_recovery"] = sum(1 for f in faults if f.get("no_recovery"))
        # A torn-tail fault that found nothing to tear tested nothing: the run fails.
        counters["nemesis_failed"] = sum(1 for f in faults if f["kind"] == "torn" and not f.get("torn_ok"))
        # A graceful stop that did not end the process within 10 s is a hang.
        counters["stop_hung"] = sum(1 for f in faults if f["kind"] == "stop" and not f.get("stopped_cleanly"))
        outcomes = {k: sum(1 for op in history.ops if op["outcome"] == k) for k in ("ok", "fail", "unknown")}
        report = {"seed": seed, "seconds": args.seconds, "nodes": args.nodes, "faults": len(faults),
                  "faults_by_kind": {k: sum(1 for f in faults if f["kind"] == k) for k in kinds},
                  "appends": outcomes, "counters": counters, "windows": windows(history, faults, contexts)}
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(report, fh, indent=1)
        print(json.dumps(report, indent=1))
        bad = {k: v for k, v in counters.items() if v}
        if bad:
            print(f"faults: FAILED with seed {seed}: {bad} (details in {os.path.join(args.dir, 'faults.log')})")
            return 1
        print(f"faults: ok (seed {seed}): {len(faults)} faults, {outcomes['ok']} acknowledged appends checked")
        return 0
    finally:
        stop.set()
        for n in nodes:
            try:
                n.kill9()
            except Exception:
                pass
        if mounted:
            sh("umount", "-l", disk_node.dir, check=False)
        teardown_network(nodes)


if __name__ == "__main__":
    sys.exit(main())
