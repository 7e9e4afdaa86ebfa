#!/usr/bin/env python3
"""Memory per held request and release latency of a real `weir proxy`.

Starts `weir proxy` (release build) with one revision scaled to zero, opens N connections
that each send one request for it, waits until /v1/stats shows N held, reads the proxy's
RSS, then publishes an endpoint through the admin API and measures the time from the API's
answer to the first and the last response. Loopback only; bounded in count and time.

usage: python3 benches/hold_memory.py [N] [WEIR_BINARY]   (default 10000 target/release/weir)
Raise the open-files limit first if needed: ulimit -n 65536.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchutil import free_port, rss_kib

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
WEIR = sys.argv[2] if len(sys.argv) > 2 else "target/release/weir"


def admin(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read() or b"{}")


async def backend(port):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (Exception, asyncio.CancelledError):
            # Closed by the proxy, or cancelled when the script ends: nothing to report.
            pass
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)


async def held_request(http_port, done):
    r, w = await asyncio.open_connection("127.0.0.1", http_port)
    w.write(b"GET / HTTP/1.1\r\nHost: sleepy.default.example.com\r\n\r\n")
    await w.drain()
    line = await asyncio.wait_for(r.readline(), timeout=120)
    done.append((time.monotonic(), line))
    w.close()


async def main():
    http_port, admin_port, be_port = free_port(), free_port(), free_port()
    cfg = {
        "hold": {"queue_depth": N, "timeout": "120s"},
        "services": [{"name": "sleepy", "traffic": [{"revision": "sleepy-1", "percent": 100}]}],
        "revisions": [{"name": "sleepy-1", "endpoints": []}],
    }
    d = tempfile.mkdtemp()
    path = os.path.join(d, "weir.json")
    json.dump(cfg, open(path, "w"))
    proc = subprocess.Popen([WEIR, "proxy", "--config", path, "--http", f"127.0.0.1:{http_port}",
                             "--admin", f"127.0.0.1:{admin_port}", "--threads", "1",
                             "--log-level", "error"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if admin(admin_port, "GET", "/readyz")[0] == 200:
                    break
            except Exception:
                time.sleep(0.05)
        server = await backend(be_port)
        base = rss_kib(proc.pid)
        done = []
        tasks = []
        for i in range(N):
            tasks.append(asyncio.create_task(held_request(http_port, done)))
            if i % 500 == 499:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 60
        held = 0
        while time.monotonic() < deadline:
            _, stats = admin(admin_port, "GET", "/v1/stats")
            held = sum(r["held"] for r in stats["revisions"])
            if held >= N:
                break
            await asyncio.sleep(0.1)
        full = rss_kib(proc.pid)
        print(f"held requests:            {held}")
        print(f"proxy RSS idle / held:    {base / 1024:.1f} MiB / {full / 1024:.1f} MiB")
        print(f"memory per held request:  {(full - base) * 1024 / max(held, 1):.0f} bytes "
              f"({(full - base) / 1024:.1f} MiB for {held}; connection state included)", flush=True)
        t0 = time.monotonic()
        status, _ = admin(admin_port, "PUT", "/v1/revisions/default/sleepy-1/endpoints",
                          {"endpoints": [f"127.0.0.1:{be_port}"]})
        t1 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=120)
        ok = sum(1 for _, line in done if b" 200 " in line)
        first = min(t for t, _ in done) - t1
        last = max(t for t, _ in done) - t1
        print(f"endpoints API answered:   {status} in {(t1 - t0) * 1000:.1f} ms")
        print(f"first / last response:    +{first * 1000:.1f} ms / +{last * 1000:.1f} ms "
              f"after the API's answer ({ok}/{N} got 200)")
        server.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
