#!/usr/bin/env python3
"""What one kept-alive request costs a proxy, in figures that do not move with the machine's
noise: instructions (valgrind callgrind), heap allocations (valgrind DHAT), syscalls (strace -c)
and context switches (/proc), per request, for Weir, a bare pingora proxy and haproxy.

    benches/request_cost.py [--requests 2000]
                            [--targets weir,weir-no-access-log,weir-fast,bare-pingora,haproxy]
                            [--weir target/release/weir] [--bare target/release/bare_pingora]
                            [--measures instructions,allocations,syscalls,switches]

Every target does the same job (the peers' one: `Host: hello.default.example.com`, 90/10
over two backends, upstream keep-alive); the client sends GETs one after another over
`--conns` kept-alive connections to loopback backends that answer `200 ok` at once. Each
figure is a difference, so start-up and warm-up cancel out:

- instructions: two fresh processes under callgrind serve N and 2N requests after the
  same warm-up; (Ir(2N) - Ir(N)) / N.
- allocations: the same with DHAT, (blocks(2N) - blocks(N)) / N and the same for bytes, on
  builds with the system allocator (`--features weir-proxy/system-alloc,...`, built into
  target/system-alloc when missing): DHAT sees malloc only, not mimalloc.
- syscalls: `strace -c -f` attached for exactly the N requests; calls per request, by name.
- switches: voluntary and involuntary context switches of every thread of the process
  (/proc/PID/task/*/status) across the N requests, per request.

Needs valgrind and strace (and haproxy for that target): installed with apt-get when
missing. Python 3 stdlib only. Prints a markdown table.
"""

import argparse
import asyncio
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchutil import free_port  # noqa: E402

HOST = "hello.default.example.com"
WARMUP = 300


def ensure(tool, package):
    if shutil.which(tool):
        return True
    print(f"installing {package} (for {tool}) ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=False)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", package], check=False)
    return shutil.which(tool) is not None


# --- backends: answer every request with 200 ok, keep-alive ---------------------------------

def start_backends(n=2):
    ports = [free_port() for _ in range(n)]
    ready = threading.Event()

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        for p in ports:
            await asyncio.start_server(handle, "127.0.0.1", p)
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    ready.wait(10)
    return ports


# --- the client --------------------------------------------------------------------------

def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    status = int(head.split(b" ", 2)[1])
    return status, rest[n:]


def send(port, count, conns):
    """`count` GETs over `conns` kept-alive connections, round robin, one at a time."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
    bufs = [b""] * conns
    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: request-cost\r\nAccept: */*\r\n\r\n".encode()
    bad = 0
    for i in range(count):
        k = i % conns
        socks[k].sendall(req)
        status, bufs[k] = read_response(socks[k], bufs[k])
        bad += status != 200
    for s in socks:
        s.close()
    if bad:
        raise SystemExit(f"{bad} of {count} requests were not answered 200")


def wait_ready(port, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            send(port, 1, 1)
            return
        except (OSError, ConnectionError, SystemExit):
            time.sleep(0.2)
    raise SystemExit(f"the target on port {port} never answered")


# --- targets ---------------------------------------------------------------------------

# Weir with the access log on or off, through pingora's proxy alone (`--no-fast-path`: the
# `weir` targets) or with its own fast path in front (`--fast-path`, the default since
# 2026-11-30: the `weir-fast` targets). Both flags explicit, so a target means what it meant
# in earlier figures.
WEIR_TARGETS = ("weir", "weir-no-access-log", "weir-fast", "weir-fast-no-access-log")

def target_cmd(name, args, port, backends, scratch):
    b1, b2 = (f"127.0.0.1:{p}" for p in backends)
    if name in WEIR_TARGETS:
        cfg = os.path.join(scratch, f"{name}.yaml")
        # "weir" is the default config: the access log on, JSON lines to stdout (here
        # /dev/null: its writes cost what writes to a pipe or a file's page cache do).
        log = "access_log: off\n" if name.endswith("no-access-log") else ""
        fast = ["--fast-path"] if name.startswith("weir-fast") else ["--no-fast-path"]
        with open(cfg, "w") as f:
            f.write(log + f"""services:
  - name: hello
    traffic: [{{revision: hello-00001, percent: 90}}, {{revision: hello-00002, percent: 10}}]
revisions:
  - {{name: hello-00001, endpoints: ["{b1}"]}}
  - {{name: hello-00002, endpoints: ["{b2}"]}}
""")
        admin = free_port()
        return [args.weir, "proxy", "--config", cfg, "--http", f"127.0.0.1:{port}",
                "--admin", f"127.0.0.1:{admin}", "--threads", "1", "--log-level", "error",
                *fast]
    if name == "bare-pingora":
        return [args.bare, f"127.0.0.1:{port}", HOST, b1, b2]
    if name == "haproxy":
        cfg = os.path.join(scratch, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    use_backend hello if {{ hdr(host) -i {HOST} }}
backend hello
    balance random
    server b1 {b1} weight 90
    server b2 {b2} weight 10
""")
        return [shutil.which("haproxy") or "haproxy", "-f", cfg]
    raise SystemExit(f"unknown target {name}")


def run(cmd, wrapper=(), env=None):
    return subprocess.Popen(list(wrapper) + cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def switches(pid):
    vol = inv = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        inv += int(line.split()[1])
        except FileNotFoundError:
            pass
    return vol, inv


# --- measures ----------------------------------------------------------------------------

def valgrind_run(tool, name, args, backends, scratch, count, out, extra=()):
    """Runs the target under a valgrind tool for warm-up + `count` requests; waits for exit."""
    port = free_port()
    binary = {**{t: args.weir_sysalloc for t in WEIR_TARGETS},
              "bare-pingora": args.bare_sysalloc}.get(name) \
        if tool == "dhat" else None
    sub = argparse.Namespace(**{**vars(args), **({"weir": binary, "bare": binary} if binary else {})})
    p = run(target_cmd(name, sub, port, backends, scratch),
            ["valgrind", f"--tool={tool}", *extra, f"--{tool}-out-file={out}"])
    try:
        wait_ready(port, 300)
        send(port, WARMUP + count, args.conns)
    finally:
        stop(p)


def instructions(name, args, backends, scratch):
    """Instructions per request: callgrind over two fresh processes serving N and 2N
    requests after the same warm-up; the difference of their totals over N (start-up, the
    warm-up and shutdown cancel)."""
    totals = []
    for count in (args.requests, 2 * args.requests):
        out = os.path.join(scratch, f"callgrind.{name}.{count}")
        valgrind_run("callgrind", name, args, backends, scratch, count, out,
                     ["--dump-instr=no", "--compress-strings=no"])
        total = 0
        for f in glob.glob(out + "*"):
            with open(f, errors="replace") as fh:
                for line in fh:
                    m = re.match(r"^(?:summary|totals):\s*(\d+)", line)
                    if m:
                        total = max(total, int(m.group(1)))
        totals.append(total)
    return (totals[1] - totals[0]) / args.requests if all(totals) else None


def dhat_blocks(name, args, backends, scratch, count):
    out = os.path.join(scratch, f"dhat.{name}.{count}.json")
    valgrind_run("dhat", name, args, backends, scratch, count, out)
    import json
    with open(out) as f:
        d = json.load(f)
    # Per program point: tb = total bytes, tbk = total blocks.
    blocks = sum(pp["tbk"] for pp in d["pps"])
    nbytes = sum(pp["tb"] for pp in d["pps"])
    return blocks, nbytes


def allocations(name, args, backends, scratch):
    n = args.requests
    b1, by1 = dhat_blocks(name, args, backends, scratch, n)
    b2, by2 = dhat_blocks(name, args, backends, scratch, 2 * n)
    return (b2 - b1) / n, (by2 - by1) / n


def syscalls(name, args, backends, scratch):
    port = free_port()
    p = run(target_cmd(name, args, port, backends, scratch))
    out = os.path.join(scratch, f"strace.{name}")
    try:
        wait_ready(port)
        send(port, WARMUP, args.conns)
        s = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(p.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread
        send(port, args.requests, args.conns)
        s.send_signal(signal.SIGINT)
        s.wait(30)
    finally:
        stop(p)
    calls = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    total = sum(calls.values()) / args.requests
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return total, ", ".join(f"{k} {v / args.requests:.2f}" for k, v in top)


def context_switches(name, args, backends, scratch):
    port = free_port()
    p = run(target_cmd(name, args, port, backends, scratch))
    try:
        wait_ready(port)
        send(port, WARMUP, args.conns)
        v0, i0 = switches(p.pid)
        send(port, args.requests, args.conns)
        v1, i1 = switches(p.pid)
    finally:
        stop(p)
    return (v1 - v0) / args.requests, (i1 - i0) / args.requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--targets", default="weir,weir-no-access-log,bare-pingora,haproxy")
    ap.add_argument("--measures", default="instructions,allocations,syscalls,switches")
    ap.add_argument("--weir", default=os.path.join(ROOT, "target/release/weir"))
    ap.add_argument("--bare", default=os.path.join(ROOT, "target/release/bare_pingora"))
    # DHAT sees malloc only: the allocation counts come from builds with the system
    # allocator (the `system-alloc` feature), which the script builds when missing.
    sysalloc = os.path.join(ROOT, "target/system-alloc/release")
    ap.add_argument("--weir-sysalloc", default=os.path.join(sysalloc, "weir"))
    ap.add_argument("--bare-sysalloc", default=os.path.join(sysalloc, "bare_pingora"))
    args = ap.parse_args()
    targets = args.targets.split(",")
    measures = args.measures.split(",")
    need = {"instructions": ("valgrind", "valgrind"), "allocations": ("valgrind", "valgrind"),
            "syscalls": ("strace", "strace")}
    for m in measures:
        if m in need and not ensure(*need[m]):
            raise SystemExit(f"{need[m][0]} is needed for {m}")
    if "haproxy" in targets and not ensure("haproxy", "haproxy"):
        print("haproxy could not be installed: skipped", file=sys.stderr)
        targets.remove("haproxy")
    for t, path in (*((w, args.weir) for w in WEIR_TARGETS), ("bare-pingora", args.bare)):
        if t in targets and not os.path.exists(path):
            raise SystemExit(f"{path} is missing: cargo build --release --bin weir --bin bare_pingora")
    if "allocations" in measures and not (os.path.exists(args.weir_sysalloc)
                                          and os.path.exists(args.bare_sysalloc)):
        cmd = ["cargo", "build", "--release", "--features", "weir-proxy/system-alloc,"
               "weir-benches/system-alloc", "--bin", "weir", "--bin", "bare_pingora",
               "--target-dir", os.path.join(ROOT, "target/system-alloc")]
        print("building the system-allocator binaries: " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, cwd=ROOT, check=True)
    backends = start_backends()
    rows = []
    with tempfile.TemporaryDirectory(prefix="request-cost-") as scratch:
        for t in targets:
            row = {"target": t}
            if "instructions" in measures:
                # haproxy under valgrind is not what it is in production (no JIT, but its
                # event loop spins differently); its instructions are shown all the same.
                row["instructions"] = instructions(t, args, backends, scratch)
            if "allocations" in measures:
                row["allocations"] = allocations(t, args, backends, scratch)
            if "syscalls" in measures:
                row["syscalls"] = syscalls(t, args, backends, scratch)
            if "switches" in measures:
                row["switches"] = context_switches(t, args, backends, scratch)
            rows.append(row)
            print(f"{t}: done", file=sys.stderr)
    print(f"\n{args.requests} kept-alive GETs over {args.conns} connections, per request:\n")
    head = ["target"]
    if "instructions" in measures:
        head.append("instructions")
    if "allocations" in measures:
        head += ["allocations", "bytes allocated"]
    if "syscalls" in measures:
        head += ["syscalls", "most frequent"]
    if "switches" in measures:
        head += ["voluntary switches", "involuntary"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["target"]]
        if "instructions" in measures:
            cells.append(f"{r['instructions']:,.0f}" if r["instructions"] else "n/a")
        if "allocations" in measures:
            a, b = r["allocations"]
            cells += [f"{a:.1f}", f"{b:,.0f}"]
        if "syscalls" in measures:
            n, top = r["syscalls"]
            cells += [f"{n:.2f}", top]
        if "switches" in measures:
            v, i = r["switches"]
            cells += [f"{v:.3f}", f"{i:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
