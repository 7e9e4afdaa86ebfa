#!/usr/bin/env python3
"""The status page at 10,000 services: what it weighs and how soon a browser shows it.

    benches/status_page.py [--services 10000] [--reps 7] [--weir target/release/weir]

Starts `weir proxy` with N services (each 90/10 over two revisions, hosts and tags like a
Knative cluster's) and measures, on loopback:

- the page (`GET /`): bytes;
- its data (`GET /v1/status`, the first page of 100 routes, and a search): bytes and the
  time the proxy takes to answer (median of `--reps`);
- time to first render in headless Chromium: the wall time of `chromium --headless
  --dump-dom` until the DOM holds the rendered route rows, minus the same for a static page
  of the same size with nothing to fetch (Chromium's own start and exit), median of `--reps`
  each, alternating. `--virtual-time-budget` lets the page's timers run without waiting;
  the fetch and the rendering are real.

Python 3 stdlib only; needs chromium (apt-get install chromium).
"""

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchutil import free_port  # noqa: E402


def config(n, dead):
    out = ["access_log: off", "services:"]
    for i in range(n):
        s = f"svc-{i:05d}"
        out.append(f"  - {{name: {s}, traffic: [{{revision: {s}-00001, percent: 90, tag: current}}, "
                   f"{{revision: {s}-00002, percent: 10, tag: candidate}}]}}")
    out.append("revisions:")
    for i in range(n):
        s = f"svc-{i:05d}"
        for r in ("00001", "00002"):
            out.append(f"  - {{name: {s}-{r}, endpoints: [\"127.0.0.1:{dead}\"]}}")
    return "\n".join(out) + "\n"


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
    return body, dt


# Virtual time the page may run: enough for the first fetch and render (the page polls every
# second; a longer budget would count later polls as well).
BUDGET_MS = 500


def chromium_dom(chromium, url):
    t0 = time.perf_counter()
    out = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--user-data-dir=" + tempfile.mkdtemp(prefix="weir-chromium-"),
         f"--virtual-time-budget={BUDGET_MS}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    return out.stdout, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--weir", default=os.path.join(ROOT, "target/release/weir"))
    args = ap.parse_args()
    chromium = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if not chromium:
        raise SystemExit("chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="status-page-") as scratch:
        cfg = os.path.join(scratch, "weir.yaml")
        with open(cfg, "w") as f:
            f.write(config(args.services, free_port()))
        http_port, admin = free_port(), free_port()
        p = subprocess.Popen([args.weir, "proxy", "--config", cfg, "--http", f"127.0.0.1:{http_port}",
                              "--admin", f"127.0.0.1:{admin}", "--log-level", "error"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    get(admin, "/readyz")
                    break
                except (OSError, SystemExit):
                    if time.time() > deadline or p.poll() is not None:
                        raise SystemExit("weir did not become ready")
                    time.sleep(0.2)
            page, _ = get(admin, "/")
            rows = []
            for name, path in (("first page (100 routes)", "/v1/status"),
                               ("search \"svc-0999\"", "/v1/status?q=svc-0999")):
                times = []
                for _ in range(args.reps):
                    body, dt = get(admin, path)
                    times.append(dt)
                rows.append((name, len(body), statistics.median(times)))
            # A static page as heavy as the status page, with nothing to fetch: Chromium's own
            # cost, subtracted from the status page's.
            static = os.path.join(scratch, "static.html")
            with open(static, "wb") as f:
                f.write(b"<!doctype html><p>static</p><!--" + b"x" * len(page) + b"-->")
            page_t, base_t = [], []
            for _ in range(args.reps):
                dom, dt = chromium_dom(chromium, f"http://127.0.0.1:{admin}/")
                if "svc-00000" not in dom:
                    raise SystemExit("the rendered page does not show the first route:\n" + dom[:2000])
                page_t.append(dt)
                _, dt = chromium_dom(chromium, "file://" + static)
                base_t.append(dt)
        finally:
            p.terminate()
            p.wait()
    print(f"status page at {args.services} services ({time.strftime('%Y-%m-%d')}, median of {args.reps})\n")
    print("| what | bytes | time |")
    print("|---|---|---|")
    print(f"| `GET /` (the page) | {len(page):,} | |")
    for name, size, t in rows:
        print(f"| `GET /v1/status`, {name} | {size:,} | {t * 1e3:.1f} ms |")
    render = statistics.median(page_t) - statistics.median(base_t)
    print(f"| first render in headless Chromium (page - static page) | | {render * 1e3:.0f} ms "
          f"({statistics.median(page_t) * 1e3:.0f} - {statistics.median(base_t) * 1e3:.0f}) |")


if __name__ == "__main__":
    main()
