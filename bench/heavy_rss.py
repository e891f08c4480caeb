"""The heavy-contexts attack of hardening.py alone on a fresh node for SECS seconds, then
the node's RSS by mapping (WAL segments, body store, other files, anonymous) from
/proc/PID/smaps. Loopback only; stops by itself.

    python3 bench/heavy_rss.py target/release/fleetlm 30
"""
import json, os, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hardening as h

bin_path, secs = sys.argv[1], float(sys.argv[2])
port = h.free_ports(1)
data = tempfile.mkdtemp(prefix="heavy-rss-")
srv = subprocess.Popen([bin_path, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(data, "d"),
                        "--cores", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def status(k):
    for line in open(f"/proc/{srv.pid}/status"):
        if line.startswith(k + ":"):
            return int(line.split()[1]) // 1024
def by_kind():
    out, cur = {}, None
    for line in open(f"/proc/{srv.pid}/smaps"):
        f = line.split()
        if f and "-" in f[0] and all(c in "0123456789abcdef-" for c in f[0]):
            path = f[5] if len(f) > 5 else ""
            cur = "wal" if "/wal" in path else "bodies" if "/bodies/" in path else ("anon" if not path.startswith("/") else "other-file")
        elif f and f[0] == "Rss:":
            out[cur] = out.get(cur, 0) + int(f[1]) // 1024
    return out
try:
    for _ in range(600):
        try:
            if h.once(port, "GET", "/health/ready")[0] == 200: break
        except OSError: pass
        time.sleep(0.05)
    stop, got = threading.Event(), {}
    t = threading.Thread(target=h.attack_heavy_contexts, args=(port, stop, got), daemon=True)
    t.start(); time.sleep(secs); stop.set(); t.join(30)
    print(json.dumps({"bin": bin_path, "secs": secs, "got": got, "rss_anon_mib": status("RssAnon"),
                      "rss_file_mib": status("RssFile"), "rss_mib_by_mapping": by_kind()}))
finally:
    srv.kill(); srv.wait(); subprocess.run(["rm", "-rf", data])
