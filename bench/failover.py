#!/usr/bin/env python3
"""Failover time of a local cluster (bench/cluster.sh): SIGKILL the node that leads the
most shards while appends run, and measure, per shard it led, the time from the kill
to the first acknowledged (201) append on that shard through a surviving node.

    bench/failover.py ROUNDS   (cluster must be up: bench/cluster.sh up 3)
Prints one JSON object: per round, the killed node and the per-shard times in ms."""
import http.client
import json
import subprocess
import sys
import threading
import time

HTTP_BASE = 4000
SHARDS_MAX = 64


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def req(port, method, path, body=None, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return None, b""
    finally:
        c.close()


def view(port):
    status, body = req(port, "GET", "/v1/cluster")
    return json.loads(body) if status == 200 else None


def wait_balanced(port):
    """Until every shard is led by its preferred node (bench/cluster.sh balanced)."""
    if subprocess.run(["bench/cluster.sh", "balanced"]).returncode != 0:
        raise SystemExit("cluster did not settle with spread leaders")
    return view(port)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    nodes = int(open("bench/.cluster/nodes").read())
    out = []
    for r in range(rounds):
        v = wait_balanced(HTTP_BASE + 2)
        shards = len(v["shards"])
        victim = 1
        led = [s["shard"] for s in v["shards"] if s["leader"] == victim]
        # One context per shard the victim leads.
        ctx = {}
        i = 0
        while len(ctx) < len(led):
            name = f"failover-{r}-{i}"
            if fnv1a(name) % shards in led and fnv1a(name) % shards not in ctx:
                ctx[fnv1a(name) % shards] = name
            i += 1
        for name in ctx.values():
            for _ in range(100):
                status, answer = req(HTTP_BASE + 2, "PUT", f"/v1/contexts/{name}", '{"token_budget":100000}')
                if status in (200, 201):
                    break
                time.sleep(0.1)
            else:
                raise SystemExit(f"PUT {name}: {status} {answer!r}")
        body = json.dumps({"message": {"role": "user", "parts": [{"type": "text", "text": "x" * 200}]}})
        first_ok = {}
        stop = threading.Event()
        killed_at = [None]
        dead_at = [None]  # the kill command returned: the process is gone

        def writer(shard, name):
            n = 0
            while not stop.is_set():
                port = HTTP_BASE + 2 + (n % (nodes - 1))  # survivors: nodes 2..n
                n += 1
                started = time.time()
                status, _ = req(port, "POST", f"/v1/contexts/{name}/messages", body, timeout=5)
                now = time.time()
                # Only appends sent once the node is dead count (one sent earlier may
                # still be answered by the old leader); the time runs from before the kill.
                sent_after = dead_at[0] is not None and started > dead_at[0]
                if status == 201 and sent_after and shard not in first_ok:
                    first_ok[shard] = now - killed_at[0]
                if status != 201:
                    time.sleep(0.01)

        threads = [threading.Thread(target=writer, args=(s, n)) for s, n in ctx.items()]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at[0] = time.time()  # before the kill: conservative by the kill's own time
        subprocess.run(["bench/cluster.sh", "kill", str(victim)], check=True)
        dead_at[0] = time.time()
        deadline = time.time() + 30
        while len(first_ok) < len(ctx) and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        out.append({"round": r, "killed_node": victim, "shards": led,
                    "first_append_ms": {str(s): round(t * 1000) for s, t in sorted(first_ok.items())}})
        subprocess.run(["bench/cluster.sh", "start", str(victim)], check=True, stdout=subprocess.DEVNULL)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
