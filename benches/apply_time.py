#!/usr/bin/env python3
"""Apply time and memory of whole-config updates through `PUT /v1/config`.

For each N, starts a fresh `weir proxy` (release build, empty config), PUTs a config of N
services (each with one revision and one endpoint, like Knative's Route + Revision), and
reports the PUT's wall time (parse + validate + compile + publish), a second PUT of the same
size (the steady-state update), and the proxy's RSS before and after. Loopback only.

usage: python3 benches/apply_time.py [WEIR_BINARY] [N ...]
       (default target/release/weir 1000 10000 100000)
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchutil import free_port, rss_kib

WEIR = sys.argv[1] if len(sys.argv) > 1 else "target/release/weir"
SIZES = [int(n) for n in sys.argv[2:]] or [1000, 10000, 100000]


def config(n, gen):
    return {
        "services": [{"name": f"svc-{i}", "traffic": [{"revision": f"svc-{i}-{gen:05}", "percent": 100}]}
                     for i in range(n)],
        "revisions": [{"name": f"svc-{i}-{gen:05}", "endpoints": [f"127.0.0.1:{10000 + i % 50000}"]}
                      for i in range(n)],
    }


def put(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/config", data=body, method="PUT",
                                 headers={"content-type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
        assert r.status == 200, r.status
    return time.monotonic() - t


print("| services | body MB | first PUT ms | second PUT ms | RSS before MiB | RSS after MiB |")
print("|---:|---:|---:|---:|---:|---:|")
for n in SIZES:
    d = tempfile.mkdtemp()
    path = os.path.join(d, "empty.json")
    json.dump({}, open(path, "w"))
    admin = free_port()
    proc = subprocess.Popen([WEIR, "proxy", "--config", path, "--http", f"127.0.0.1:{free_port()}",
                             "--admin", f"127.0.0.1:{admin}", "--threads", "1", "--log-level", "error"])
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).read()
                break
            except Exception:
                time.sleep(0.05)
        before = rss_kib(proc.pid) / 1024
        b1 = json.dumps(config(n, 1)).encode()
        b2 = json.dumps(config(n, 2)).encode()
        t1 = put(admin, b1)
        t2 = put(admin, b2)
        after = rss_kib(proc.pid) / 1024
        print(f"| {n:,} | {len(b1) / 1e6:.1f} | {t1 * 1000:.0f} | {t2 * 1000:.0f} | {before:.1f} | {after:.1f} |")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
