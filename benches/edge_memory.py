#!/usr/bin/env python3
"""Memory per idle client connection, and how fast slow clients are cut, in a real `weir proxy`.

1. Opens N client connections that each send one request (answered 200 by a loopback
   backend) and then stay idle (kept alive), and reads the proxy's RSS before and after:
   the memory one idle kept-alive connection costs.
2. Opens M connections that send the first bytes of a request head and then nothing more
   (slowloris), and measures when the proxy has closed all of them after
   limits.header_read_timeout (1 s here).

Loopback only; bounded in count and time. The proxy's connection limit is raised to fit N.
usage: python3 benches/edge_memory.py [N] [M] [WEIR_BINARY]
       (default 15000 2000 target/release/weir; needs `ulimit -n` above N + M + 100)
"""

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchutil import free_port, rss_kib

N = int(sys.argv[1]) if len(sys.argv) > 1 else 15_000
M = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000
WEIR = sys.argv[3] if len(sys.argv) > 3 else "target/release/weir"
HOST = b"edge.default.example.com"


async def backend(port):
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (Exception, asyncio.CancelledError):
            pass
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)


async def idle_client(port, keep):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
    await w.drain()
    await r.readuntil(b"ok")
    keep.append((r, w))


async def slow_client(port, closed):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHo")
    await w.drain()
    data = await r.read()  # until the proxy closes
    closed.append((time.monotonic(), data[:12]))
    w.close()


def wait_ready(admin_port, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit("weir did not get ready")


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    be_port, http, admin = free_port(), free_port(), free_port()
    be = await backend(be_port)
    cfg = {
        "limits": {"header_read_timeout": "1s", "idle_timeout": "300s",
                   "max_connections": N + M + 100},
        "services": [{"name": "edge", "traffic": [{"revision": "edge-1", "percent": 100}]}],
        "revisions": [{"name": "edge-1", "endpoints": [f"127.0.0.1:{be_port}"]}],
    }
    d = tempfile.mkdtemp()
    path = os.path.join(d, "weir.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen([WEIR, "proxy", "--config", path, "--http", f"127.0.0.1:{http}",
                          "--admin", f"127.0.0.1:{admin}", "--threads", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(admin)
        # A few requests first, so the pools and buffers of a working proxy are counted.
        warm = []
        await asyncio.gather(*(idle_client(http, warm) for _ in range(50)))
        for _, w in warm:
            w.close()
        await asyncio.sleep(1)
        before = rss_kib(p.pid)
        keep = []
        for i in range(0, N, 500):
            await asyncio.gather(*(idle_client(http, keep) for _ in range(min(500, N - i))))
        await asyncio.sleep(1)
        after = rss_kib(p.pid)
        print(f"{len(keep)} idle kept-alive connections: RSS {before} -> {after} KiB, "
              f"{(after - before) * 1024 / max(len(keep), 1):.0f} bytes each")
        for _, w in keep:
            w.close()
        keep.clear()
        await asyncio.sleep(2)

        closed = []
        start = time.monotonic()
        await asyncio.gather(*(slow_client(http, closed) for _ in range(M)))
        last = max(t for t, _ in closed) - start
        first = min(t for t, _ in closed) - start
        answered = sum(1 for _, d in closed if d.startswith(b"HTTP/1.1 408"))
        print(f"{M} slow request heads: all closed {first:.2f}-{last:.2f} s after they "
              f"started (header_read_timeout 1 s); {answered} answered 408")
    finally:
        p.terminate()
        p.wait(timeout=40)
        be.close()


asyncio.run(main())
