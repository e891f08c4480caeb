#!/usr/bin/env python3
"""Attacks on a live node, each bounded in time, with honest clients measured meanwhile.

    bench/hardening.sh            # builds, runs every attack, prints a table row per phase
    python3 bench/hardening.py BIN OUT.json [--secs 8] [--phases quiet,heavy-contexts]

One release node on 127.0.0.1 (2 cores, a peer port with a cluster secret). Phases: a
quiet baseline, then one attack at a time. During each phase 4 honest clients (one
connection each, so that both cores carry some) alternate a durable append and a tail
read, each at most 200 requests/s; their p50/p99 are compared with the quiet phase. The node's RSS (VmRSS, max over
the phase), the CPU of the node and of this script (honest clients and attacker: they
share the machine's 2 cores with the node) and its readiness (/health/ready polled every 200 ms) are recorded, and what
the attack got back (status counts). Loopback only; every phase stops by itself.
"""
import json
import multiprocessing
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def free_ports(n):
    """`n` consecutive ports that are free, below the kernel's ephemeral range (where
    the attacks' thousands of client connections take their ports)."""
    rnd = random.Random()
    while True:
        base = rnd.randrange(20000, 30000)
        try:
            held = []
            for p in range(base, base + n):
                s = socket.socket()
                s.bind((HOST, p))
                held.append(s)
            for s in held:
                s.close()
            return base
        except OSError:
            for s in held:
                s.close()


def request(sock, method, path, body=b"", headers=()):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return read_response(sock)


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ")[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return status, rest[:length]


def once(port, method, path, body=b"", headers=(), timeout=10):
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        return request(s, method, path, body, headers)


def msg(text, **extra):
    m = {"role": "user", "parts": [{"type": "text", "text": text}]}
    m.update(extra)
    return json.dumps({"message": m}).encode()


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


HONEST_INTERVAL_S = 0.005  # each honest client: one request per 5 ms (200/s) at most


class Honest(threading.Thread):
    """Alternates an append and a tail on one connection at a steady pace (not flat out:
    the machine's 2 cores would then be saturated by the honest load alone, and the
    attack's effect lost in it), recording latencies (ms)."""

    def __init__(self, port, ctx, stop):
        super().__init__(daemon=True)
        self.port, self.ctx, self.stop = port, ctx, stop
        self.lat, self.errors = [], 0
        self.by_op = {"append": [], "tail": []}

    def run(self):
        sock = None
        i = 0
        while not self.stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, self.port), timeout=10)
                t0 = time.perf_counter()
                if i % 2 == 0:
                    st, _ = request(sock, "POST", f"/v1/contexts/{self.ctx}/messages", msg(f"h{i}"))
                    ok = st == 201
                else:
                    st, _ = request(sock, "GET", f"/v1/contexts/{self.ctx}/tail?limit=20")
                    ok = st == 200
                took = time.perf_counter() - t0
                self.lat.append(took * 1000)
                self.by_op["append" if i % 2 == 0 else "tail"].append(took * 1000)
                self.errors += 0 if ok else 1
                time.sleep(max(0.0, HONEST_INTERVAL_S - took))
            except (OSError, ConnectionError):
                self.errors += 1
                sock = None
                time.sleep(0.01)
            i += 1


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---- attacks: each runs until `stop` is set, counting what it got back ----

def hammer(port, stop, out, method, path, body=b""):
    """The same request on a fresh connection, again and again, counting the answers."""
    while not stop.is_set():
        try:
            st, _ = once(port, method, path, body)
            out[st] = out.get(st, 0) + 1
        except (OSError, ConnectionError):
            out["conn_error"] = out.get("conn_error", 0) + 1


def run_attack(attack, target, stop, got_q):
    """An attack in its own process; what it got back goes to the parent at the end."""
    out = {}
    try:
        attack(target, stop, out)
    finally:
        got_q.put(out)


def attack_render_bomb(port, stop, out):
    body = json.dumps({"message": {"role": "user", "parts": [{"type": "data", "n": "PLACEHOLDER"}]}})
    body = body.replace('"PLACEHOLDER"', "[" + ",".join(["9e15"] * 200_000) + "]").encode()
    hammer(port, stop, out, "POST", "/v1/contexts/attack/messages", body)


def attack_slow_chunked(port, stop, out):
    def one():
        try:
            s = socket.create_connection((HOST, port), timeout=30)
            s.sendall(b"PUT /v1/contexts/slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not stop.is_set():
                s.sendall(b"1;" + b"e" * 200 + b"\r\nx\r\n")
                time.sleep(0.001)
            out["gave_up"] = out.get("gave_up", 0) + 1
        except (OSError, ConnectionError):
            out["cut_off"] = out.get("cut_off", 0) + 1

    while not stop.is_set():
        threads = [threading.Thread(target=one, daemon=True) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def attack_non_reader(port, stop, out):
    socks = []
    req = b"GET /v1/contexts/big/messages?limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(10):
        s = socket.create_connection((HOST, port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            for _ in range(30):
                s.sendall(req)
        except OSError:
            pass
        socks.append(s)
    stop.wait()
    for s in socks:
        try:
            s.setblocking(False)
            s.recv(1)
            out["still_open"] = out.get("still_open", 0) + 1
        except BlockingIOError:
            out["still_open"] = out.get("still_open", 0) + 1
        except OSError:
            out["closed_by_server"] = out.get("closed_by_server", 0) + 1
        s.close()


def attack_idle_flood(port, stop, out):
    socks = []
    for _ in range(3000):
        try:
            socks.append(socket.create_connection((HOST, port), timeout=5))
        except OSError:
            out["refused"] = out.get("refused", 0) + 1
    out["opened"] = len(socks)
    stop.wait()
    for s in socks:
        s.close()


def attack_peer_garbage(peer_port, stop, out):
    rnd = random.Random(1)
    while not stop.is_set():
        try:
            with socket.create_connection((HOST, peer_port), timeout=5) as s:
                s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 4096))))
                s.settimeout(6)
                got = s.recv(65536)
                out["answered" if got else "closed"] = out.get("answered" if got else "closed", 0) + 1
        except (OSError, ConnectionError):
            out["closed"] = out.get("closed", 0) + 1


def attack_metadata(port, stop, out):
    i = 0
    while not stop.is_set():
        body = json.dumps({"metadata": {f"k{i}": "m" * 60_000}}).encode()
        try:
            st, _ = once(port, "PATCH", "/v1/contexts/attack/metadata", body)
            out[st] = out.get(st, 0) + 1
        except (OSError, ConnectionError):
            out["conn_error"] = out.get("conn_error", 0) + 1
        i += 1


def attack_heavy_contexts(port, stop, out, connections=1):
    """New contexts, each compacted to a ~900 KB summary (the summary's text goes to the
    body store; memory keeps a reference per message), from `connections` connections,
    each as fast as it goes (a 429 is not waited out)."""
    replacement = json.dumps({"replacement": [{"role": "system", "parts": [{"type": "text",
                                                                          "text": "s" * 900_000}]}]}).encode()
    # HEAVY_MB_PER_SEC paces each connection (to measure what a given byte rate costs
    # the honest clients); unset: as fast as the connection goes.
    rate = float(os.environ.get("HEAVY_MB_PER_SEC", "0")) * 1e6
    lock = threading.Lock()

    def count(key):
        with lock:
            out[key] = out.get(key, 0) + 1

    def one(c):
        i, t0 = 0, time.time()
        try:
            with socket.create_connection((HOST, port), timeout=30) as s:
                while not stop.is_set():
                    if rate > 0:
                        ahead = t0 + i * len(replacement) / rate - time.time()
                        if ahead > 0:
                            time.sleep(ahead)
                    ctx = f"heavy{c}-{i}"
                    i += 1
                    request(s, "PUT", f"/v1/contexts/{ctx}", b'{"token_budget":100000000}')
                    st, _ = request(s, "POST", f"/v1/contexts/{ctx}/compact", replacement)
                    count("compacted" if st == 200 else st)
        except (OSError, ConnectionError):
            count("conn_error")

    threads = [threading.Thread(target=one, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def attack_heavy_contexts_8(port, stop, out):
    attack_heavy_contexts(port, stop, out, connections=8)


def attack_token_overflow(port, stop, out):
    hammer(port, stop, out, "POST", "/v1/contexts/attack/messages", msg("t", token_count=2**64 - 1))


def attack_huge_window(port, stop, out):
    hammer(port, stop, out, "GET", "/v1/contexts/big/context")


def main():
    bin_path, out_path = sys.argv[1], sys.argv[2]
    secs = float(sys.argv[sys.argv.index("--secs") + 1]) if "--secs" in sys.argv else 8.0
    port = free_ports(3)
    peer = port + 1  # and port + 2, for core 1
    data = tempfile.mkdtemp(prefix="fleetlm-hardening-")
    log = open(os.path.join(data, "server.log"), "w")
    srv = subprocess.Popen(
        [bin_path, "serve", "--listen", f"{HOST}:{port}", "--data-dir", os.path.join(data, "d"), "--cores", "2",
         "--peer-listen", f"{HOST}:{peer}", "--cluster-secret", "hardening-bench-secret-0123"]
        + os.environ.get("FLEETLM_EXTRA_ARGS", "").split(),
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(600):
            try:
                if once(port, "GET", "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        for ctx in ["attack", "big"] + [f"honest{i}" for i in range(4)]:
            once(port, "PUT", f"/v1/contexts/{ctx}", b'{"token_budget":100000000000}')
        # A ~20 MB manual window (over the 16 MiB answer limit) for the read attacks.
        with socket.create_connection((HOST, port), timeout=30) as s:
            for i in range(400):
                request(s, "POST", "/v1/contexts/big/messages", msg(f"{i}" + "b" * 50_000))
        phases = [("quiet", None), ("render-bomb", attack_render_bomb), ("slow-chunked", attack_slow_chunked),
                  ("non-reader", attack_non_reader), ("idle-flood", attack_idle_flood),
                  ("peer-garbage", attack_peer_garbage), ("metadata-growth", attack_metadata),
                  ("token-overflow", attack_token_overflow), ("huge-window", attack_huge_window),
                  ("heavy-contexts", attack_heavy_contexts), ("heavy-contexts-8", attack_heavy_contexts_8)]
        if "--phases" in sys.argv:
            # e.g. --phases quiet,heavy-contexts: the quiet phase first, as the baseline.
            wanted = sys.argv[sys.argv.index("--phases") + 1].split(",")
            phases = [p for p in phases if p[0] in wanted]
        results = []
        mp = multiprocessing.get_context("fork")
        for name, attack in phases:
            stop = mp.Event()
            honest = [Honest(port, f"honest{i}", stop) for i in range(4)]
            got = {}
            threads = honest[:]
            attacker, got_q = None, mp.Queue()
            if attack is not None:
                # In its own process: an attacker thread would share this process's GIL
                # with the honest clients and inflate their latencies by itself.
                target = peer if attack is attack_peer_garbage else port
                attacker = mp.Process(target=run_attack, args=(attack, target, stop, got_q), daemon=True)
                attacker.start()
            for t in threads:
                t.start()
            t_start = time.time()
            t_end = t_start + secs
            cpu0, own0 = cpu_secs(srv.pid), sum(os.times()[:2])
            rss, not_ready, polls = 0, 0, 0
            while time.time() < t_end:
                rss = max(rss, rss_kib(srv.pid))
                try:
                    ok = once(port, "GET", "/health/ready", timeout=2)[0] == 200
                except (OSError, ConnectionError):
                    ok = False
                not_ready += 0 if ok else 1
                polls += 1
                time.sleep(0.2)
            elapsed = time.time() - t_start
            server_cpu = (cpu_secs(srv.pid) - cpu0) / elapsed * 100
            bench_cpu = (sum(os.times()[:2]) - own0) / elapsed * 100
            stop.set()
            for t in threads:
                t.join(timeout=30)
            if attacker is not None:
                try:
                    got = got_q.get(timeout=30)
                except queue.Empty:
                    got = {"attacker": "no report"}
                attacker.join(timeout=5)
                if attacker.is_alive():
                    attacker.kill()
            lat = [x for h in honest for x in h.lat]
            try:  # the node's own view (cumulative since it started)
                server_latency = json.loads(once(port, "GET", "/v1/admin/latency")[1])["histograms"]
            except (OSError, ConnectionError, ValueError, KeyError):
                server_latency = None
            row = {"phase": name, "honest_requests": len(lat), "honest_errors": sum(h.errors for h in honest),
                   "honest_p50_ms": pct(lat, 0.5), "honest_p99_ms": pct(lat, 0.99), "rss_max_mib": rss / 1024,
                   "honest_p99_ms_by_op": {op: pct([x for h in honest for x in h.by_op[op]], 0.99)
                                           for op in ("append", "tail")},
                   "server_cpu_pct": server_cpu, "clients_cpu_pct": bench_cpu,
                   "ready_polls": polls, "not_ready_polls": not_ready, "attack_got": {str(k): v for k, v in got.items()},
                   "alive": srv.poll() is None, "server_latency_us_since_start": server_latency}
            results.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(1.0)
        quiet = results[0]["honest_p99_ms"]
        for r in results:
            r["p99_vs_quiet"] = (r["honest_p99_ms"] / quiet) if (quiet and r["honest_p99_ms"]) else None
        with open(out_path, "w") as f:
            json.dump({"secs_per_phase": secs, "phases": results}, f, indent=1)
    finally:
        srv.kill()
        srv.wait()
        log.close()
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
