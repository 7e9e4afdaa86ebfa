#!/usr/bin/env python3
"""End-to-end benchmark: Weir against nginx and haproxy, one core each (python3 stdlib only).

Normally started by benches/e2e/run.sh, which installs the tools and builds the binary:

    benches/e2e/run.sh [--reps 5] [--duration 10] [--scenarios 1,2,3] [--force]

Layout on a two-core machine (benches/e2e/README.md): the proxy under test alone on
core 1 (`taskset -c 1`), the backends (one nginx worker, two ports) and the load generators on
core 0. Targets alternate A B C D ... for every rep, each a fresh process with its own warm-up.

Scenarios
  1  wrk -t1 -c64 -d DUR, keep-alive, one Host: req/s, p50/p99, CPU s per 100k requests, peak RSS
  2  a fixed rate (oha -q, else k6 constant-arrival-rate) at about half the slowest target's
     scenario-1 median: p50/p99 at that rate, CPU per request
  3  10,000 configured services, wrk round robin over 1,000 of their hosts: req/s, CPU, RSS
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
HOST = "hello.default.example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "1"
LOAD_CORE = "0"
N_SERVICES = 10_000
N_HOT = 1_000

VARIANTS = set()  # names of --variant targets (ratios against weir)
STARTED = []  # every Popen we started, so that cleanup stops exactly those


def log(msg=""):
    print(msg, flush=True)


def warn(msg):
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"\n*** FAIL: {msg} ***\n", file=sys.stderr, flush=True)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# processes and /proc


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd, core, logpath, env=None):
    """Starts cmd pinned to `core` in its own session; its output goes to logpath."""
    out = open(logpath, "ab")
    p = subprocess.Popen(
        ["taskset", "-c", core, *cmd],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    out.close()
    STARTED.append(p)
    return p


def stop(p, grace=5.0):
    if p is None or p.poll() is not None:
        if p in STARTED:
            STARTED.remove(p)
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: only what we started
        except ProcessLookupError:
            pass
        p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(STARTED):
        stop(p, grace=3.0)


def proc_children():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            kids.setdefault(int(rest[1]), []).append(int(d))
        except (OSError, IndexError):
            pass
    return kids


def tree(pid):
    kids = proc_children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pid):
    """(user, sys) of the process tree, reaped children included (utime+cutime,
    stime+cstime)."""
    user = sys_ = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            user += int(rest[11]) + int(rest[13])
            sys_ += int(rest[12]) + int(rest[14])
        except (OSError, IndexError):
            pass
    return user, sys_


def vm_hwm_kb(pid):
    """Peak RSS (VmHWM) of the largest process of the tree. For nginx that is the worker: its
    master holds the same configuration in pages the worker shares copy-on-write, so a sum
    would count the configuration twice."""
    best = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


def core_times():
    """{core: (busy, total)} jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()[:8]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6]
                out[m.group(1)] = (busy, sum(v))
    return out


def core_busy(a, b, core):
    (b0, t0), (b1, t1) = a[core], b[core]
    return 100.0 * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(max_s, threshold=10.0):
    """Waits until both cores are below `threshold`% busy for a second; False after max_s."""
    deadline = time.time() + max_s
    while True:
        a = core_times()
        time.sleep(1.0)
        b = core_times()
        worst = max(core_busy(a, b, c) for c in (LOAD_CORE, PROXY_CORE) if c in a)
        if worst <= threshold:
            return True
        if time.time() >= deadline:
            warn(f"machine not quiet before a run ({worst:.0f}% busy on a core)")
            return False


def other_heavy():
    load = os.getloadavg()[0]
    names = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/comm") as f:
                    c = f.read().strip()
                if c in ("cargo", "rustc", "cc1", "cc1plus"):
                    names.append(f"{c}({d})")
            except OSError:
                pass
    if names:
        return f"compiler processes are running: {', '.join(names[:6])}"
    if load > 0.5:
        return f"1-min load average is {load:.2f} (> 0.5)"
    return None


# --------------------------------------------------------------------------------------------
# HTTP checks


def get(port, host, path="/", timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("X-Revision")
    finally:
        c.close()


def wait_ready(port, host, p, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p is not None and p.poll() is not None:
            return False
        try:
            if get(port, host, timeout=1.0)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def count_split(port, hosts, total=10_000, conns=8):
    """`total` keep-alive requests over `conns` connections, hosts in turn; counts X-Revision."""
    counts, lock = {}, threading.Lock()

    def worker(k):
        local = {}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        n = total // conns + (1 if k < total % conns else 0)
        for i in range(n):
            h = hosts[(k + i * conns) % len(hosts)]
            try:
                c.request("GET", "/", headers={"Host": h})
                r = c.getresponse()
                r.read()
                key = r.getheader("X-Revision") if r.status == 200 else f"status {r.status}"
            except (OSError, http.client.HTTPException) as e:
                key = f"error {type(e).__name__}"
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            local[key] = local.get(key, 0) + 1
        c.close()
        with lock:
            for key, v in local.items():
                counts[key] = counts.get(key, 0) + v

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


# --------------------------------------------------------------------------------------------
# configs


def peer_text(peers, name, ports, scratch):
    """A config from the peers folder with its ports and scratch paths replaced."""
    with open(os.path.join(peers, name)) as f:
        text = f.read()
    text = text.replace("/tmp/peers", scratch)
    for old, key in (("8080", "proxy"), ("8081", "b1"), ("8082", "b2")):
        if key in ports:
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{ports[key]}")
    return text


def weir_yaml_hello(ports):
    return f"""# generated by benches/e2e/run.py: the peers' job (90/10 by Host)
access_log: off
domain: example.com
drain_timeout: 2s
services:
  - name: hello
    namespace: default
    traffic:
      - {{revision: hello-00001, percent: 90}}
      - {{revision: hello-00002, percent: 10}}
revisions:
  - {{name: hello-00001, namespace: default, endpoints: ["127.0.0.1:{ports['b1']}"]}}
  - {{name: hello-00002, namespace: default, endpoints: ["127.0.0.1:{ports['b2']}"]}}
"""


def svc_name(i):
    return f"svc-{i:05d}"


def svc_host(i):
    return f"{svc_name(i)}.default.example.com"


def hot_hosts():
    step = N_SERVICES // N_HOT
    return [svc_host(i * step) for i in range(N_HOT)]


def weir_yaml_many(ports):
    out = ["# generated by benches/e2e/run.py: 10,000 services, each 90/10 over two revisions",
           "access_log: off", "domain: example.com", "drain_timeout: 2s", "services:"]
    for i in range(N_SERVICES):
        n = svc_name(i)
        out.append(f"  - {{name: {n}, namespace: default, traffic: "
                   f"[{{revision: {n}-00001, percent: 90}}, {{revision: {n}-00002, percent: 10}}]}}")
    out.append("revisions:")
    for i in range(N_SERVICES):
        n = svc_name(i)
        out.append(f"  - {{name: {n}-00001, namespace: default, endpoints: [\"127.0.0.1:{ports['b1']}\"]}}")
        out.append(f"  - {{name: {n}-00002, namespace: default, endpoints: [\"127.0.0.1:{ports['b2']}\"]}}")
    return "\n".join(out) + "\n"


def nginx_many(ports, scratch):
    """One server block per service (hashed server_name), each with its own upstream."""
    out = [f"""# generated by benches/e2e/run.py: 10,000 services as server blocks + upstreams
worker_processes 1;
daemon off;
pid {scratch}/run/nginx-many.pid;
error_log {scratch}/logs/nginx-many-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 128;
    variables_hash_max_size 2048;
    client_body_temp_path {scratch}/run/p_body;
    proxy_temp_path {scratch}/run/p_proxy;
    fastcgi_temp_path {scratch}/run/p_fcgi;
    uwsgi_temp_path {scratch}/run/p_uwsgi;
    scgi_temp_path {scratch}/run/p_scgi;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_buffering on;
    server {{
        listen 127.0.0.1:{ports['proxy']} default_server;
        return 404;
    }}"""]
    for i in range(N_SERVICES):
        n = svc_name(i)
        out.append(f"    upstream {n} {{ server 127.0.0.1:{ports['b1']} weight=90; "
                   f"server 127.0.0.1:{ports['b2']} weight=10; keepalive 8; keepalive_requests 10000000; }}")
        out.append(f"    server {{ listen 127.0.0.1:{ports['proxy']}; server_name {svc_host(i)}; "
                   f"location / {{ proxy_pass http://{n}; }} }}")
    out.append("}")
    return "\n".join(out) + "\n"


def haproxy_many(ports, scratch):
    """A map file host -> backend, 10,000 backends of two weighted servers."""
    mapfile = os.path.join(scratch, "hosts.map")
    with open(mapfile, "w") as f:
        for i in range(N_SERVICES):
            f.write(f"{svc_host(i)} {svc_name(i)}\n")
    out = [f"""# generated by benches/e2e/run.py: 10,000 services via a host map
global
    nbthread 1
    maxconn 8000
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    option http-keep-alive
    http-reuse always
frontend fe_http
    bind 127.0.0.1:{ports['proxy']}
    use_backend %[req.hdr(host),field(1,:),lower,map({mapfile},be_404)]
backend be_404
    http-request return status 404"""]
    for i in range(N_SERVICES):
        out.append(f"backend {svc_name(i)}\n    balance roundrobin\n"
                   f"    server rev1 127.0.0.1:{ports['b1']} weight 90\n"
                   f"    server rev2 127.0.0.1:{ports['b2']} weight 10")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# targets


class Target:
    def __init__(self, name, make_cmd, env=None):
        self.name, self.make_cmd, self.env = name, make_cmd, env or {}


def parse_variant(text):
    """`NAME=PATH[,VAR=VALUE...]`: another Weir binary (or the same with other environment) run
    as one more target, for a before/after comparison inside one run. `access_log=on` is not an
    environment variable: it turns the access log on for that target (a file in the scratch
    dir); every other target runs with `access_log: off`, as the peers do."""
    name, _, rest = text.partition("=")
    path, *env = rest.split(",")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--variant wants NAME=PATH[,VAR=VALUE...], not {text!r}")
    if name in ("weir", "nginx", "haproxy"):
        raise argparse.ArgumentTypeError(f"--variant name {name!r} is taken")
    if not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"--variant {name}: {path} is not an executable")
    envs = dict(e.split("=", 1) for e in env if "=" in e)
    return name, os.path.abspath(path), envs


def make_targets(args, scratch, ports, many):
    """Targets for one config set; `many` selects the 10,000-service configs. Each target writes
    its config with the ports in force when it starts (every run gets fresh ports)."""
    tag = "many" if many else "hello"
    weir_cfg = os.path.join(scratch, f"weir-{tag}.yaml")
    nginx_cfg = os.path.join(scratch, f"nginx-{tag}.conf")
    haproxy_cfg = os.path.join(scratch, f"haproxy-{tag}.cfg")

    def write(path, text):
        with open(path, "w") as f:
            f.write(text)

    def weir_cmd(binary=args.weir, access_log=None, extra=()):
        text = weir_yaml_many(ports) if many else weir_yaml_hello(ports)
        if access_log:
            # A variant with the access log on, written to a file in the scratch dir (emptied
            # at every start), as a proxy writing to its container's log file would.
            open(access_log, "w").close()
            text = text.replace("access_log: off", f"access_log: {{to: {access_log}}}")
        write(weir_cfg, text)
        return [binary, "proxy", "--config", weir_cfg, "--http", f"127.0.0.1:{ports['proxy']}",
                "--admin", f"127.0.0.1:{ports['admin']}", "--threads", "1", "--log-level", "warn",
                *extra]

    def nginx_cmd():
        write(nginx_cfg, nginx_many(ports, scratch) if many
              else peer_text(args.peers, "nginx.conf", ports, scratch))
        return [args.nginx, "-p", scratch, "-e", f"{scratch}/logs/nginx-stderr.log", "-c", nginx_cfg]

    def haproxy_cmd():
        write(haproxy_cfg, haproxy_many(ports, scratch) if many
              else peer_text(args.peers, "haproxy.cfg", ports, scratch))
        return [args.haproxy, "-f", haproxy_cfg]

    all_targets = {
        "weir": Target("weir", weir_cmd),
        "nginx": Target("nginx", nginx_cmd),
        "haproxy": Target("haproxy", haproxy_cmd),
    }
    for name, path, env in args.variant:
        env = dict(env)
        log_file = os.path.join(scratch, f"access-{name}.log") if env.pop("access_log", "") == "on" else None
        # Unset: the binary's default (the fast path since 2026-11-30).
        extra = {"on": ("--fast-path",), "off": ("--no-fast-path",)}.get(env.pop("fast_path", ""), ())
        all_targets[name] = Target(
            name, lambda path=path, log_file=log_file, extra=extra: weir_cmd(path, log_file, extra), env)
    if args.bare and not many:
        all_targets["bare-pingora"] = Target("bare-pingora", lambda: [
            args.bare, f"127.0.0.1:{ports['proxy']}", HOST, f"127.0.0.1:{ports['b1']}", f"127.0.0.1:{ports['b2']}"])
    out = []
    for name in args.targets:
        if name in ("nginx", "haproxy") and not getattr(args, name):
            warn(f"{name} is not installed: skipped")
            continue
        if name == "bare-pingora" and name not in all_targets:
            continue  # scenarios 1-2 only: it knows one Host
        out.append(all_targets[name])
    return out


class Running:
    """One fresh process of a target, on the proxy core."""

    def __init__(self, target, scratch, ports, ready_host):
        self.target = target
        logpath = os.path.join(scratch, "logs", f"{target.name}.log")
        self.p = start(target.make_cmd(), PROXY_CORE, logpath, target.env)
        if not wait_ready(ports["proxy"], ready_host, self.p, timeout=120):
            code = self.p.poll()
            stop(self.p)
            tail = ""
            try:
                with open(logpath, errors="replace") as f:
                    tail = "".join(f.readlines()[-15:])
            except OSError:
                pass
            die(f"{target.name} did not become ready on :{ports['proxy']} (exit {code}); log {logpath}:\n{tail}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop(self.p)


# --------------------------------------------------------------------------------------------
# load generators


def parse_dur(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(args, port, seconds, host=None, script=None, conns=64):
    cmd = ["taskset", "-c", LOAD_CORE, args.wrk, "-t1", f"-c{conns}", f"-d{int(round(seconds))}s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = r.stdout
    res = {"raw": out + r.stderr}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}"] = parse_dur(m.group(1), m.group(2)) if m else float("nan")
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    res["errors"] = errs
    if r.returncode != 0 or not res["requests"]:
        warn(f"wrk failed (exit {r.returncode}): {(out + r.stderr).strip()[-400:]}")
    return res


K6_SCRIPT = """// generated by benches/e2e/run.py
import http from 'k6/http';
export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)'],
  scenarios: {
    fixed: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE), timeUnit: '1s', duration: __ENV.DURATION,
      preAllocatedVUs: Number(__ENV.VUS), maxVUs: Number(__ENV.MAXVUS),
    },
  },
};
const url = __ENV.URL;
const params = { headers: { Host: __ENV.HOST } };
export default function () { http.get(url, params); }
export function handleSummary(data) { return { [__ENV.SUMMARY]: JSON.stringify(data) }; }
"""


def run_k6(args, scratch, port, rate, seconds, host):
    script = os.path.join(scratch, "fixed-rate.js")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(K6_SCRIPT)
    summary = os.path.join(scratch, "k6-summary.json")
    if os.path.exists(summary):
        os.remove(summary)
    env = {**os.environ, "RATE": str(int(rate)), "DURATION": f"{int(round(seconds))}s", "VUS": "64",
           "MAXVUS": "64", "URL": f"http://127.0.0.1:{port}/", "HOST": host, "SUMMARY": summary,
           "K6_NO_USAGE_REPORT": "true"}
    cmd = ["taskset", "-c", LOAD_CORE, args.k6, "run", "--quiet", "--no-color", script]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    res = {"raw": r.stdout + r.stderr, "requests": 0, "rps": 0.0, "p50": float("nan"),
           "p99": float("nan"), "dropped": 0, "failed_pct": float("nan")}
    try:
        with open(summary) as f:
            m = json.load(f)["metrics"]
    except (OSError, ValueError, KeyError):
        warn(f"k6 gave no summary (exit {r.returncode}): {res['raw'].strip()[-400:]}")
        return res
    d = m.get("http_req_duration", {}).get("values", {})
    res["p50"] = d.get("med", float("nan"))
    res["p99"] = d.get("p(99)", float("nan"))
    reqs = m.get("http_reqs", {}).get("values", {})
    res["requests"] = int(reqs.get("count", 0))
    res["rps"] = float(reqs.get("rate", 0.0))
    res["dropped"] = int(m.get("dropped_iterations", {}).get("values", {}).get("count", 0))
    res["failed_pct"] = 100.0 * m.get("http_req_failed", {}).get("values", {}).get("rate", 0.0)
    return res


def run_oha(args, scratch, port, rate, seconds, host):
    """oha -q RATE: open-loop fixed rate over 64 connections, latency measured from each
    request's scheduled start (--latency-correction, so a stalled proxy cannot hide its queue)."""
    out = os.path.join(scratch, "oha.json")
    if os.path.exists(out):
        os.remove(out)
    cmd = ["taskset", "-c", LOAD_CORE, args.oha, "--no-tui", "--worker-threads", "1", "-q", str(int(rate)),
           "--latency-correction", "-z", f"{int(round(seconds))}s", "-c", "64", "--host", host,
           "--output-format", "json", "-o", out, f"http://127.0.0.1:{port}/"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    res = {"raw": r.stdout + r.stderr, "requests": 0, "rps": 0.0, "p50": float("nan"),
           "p99": float("nan"), "dropped": 0, "failed_pct": float("nan")}
    try:
        with open(out) as f:
            j = json.load(f)
    except (OSError, ValueError):
        warn(f"oha gave no summary (exit {r.returncode}): {res['raw'].strip()[-400:]}")
        return res
    codes = {str(k): int(v) for k, v in (j.get("statusCodeDistribution") or {}).items()}
    # oha cuts the requests in flight when the duration is up ("aborted due to deadline", a
    # few per run): not answers the proxy failed, and not sent in time to count either.
    errors = sum(int(v) for k, v in (j.get("errorDistribution") or {}).items()
                 if k != "aborted due to deadline")
    total = sum(codes.values()) + errors
    res["requests"] = codes.get("200", 0)
    res["rps"] = float(j.get("summary", {}).get("requestsPerSec") or 0.0)
    lat = j.get("latencyPercentiles") or {}
    res["p50"] = (lat.get("p50") or float("nan")) * 1e3
    res["p99"] = (lat.get("p99") or float("nan")) * 1e3
    # oha does not drop: a generator or proxy behind the rate shows as achieved < rate.
    res["dropped"] = max(0, int(rate * seconds) - total)
    res["failed_pct"] = 100.0 * (total - res["requests"]) / max(total, 1)
    return res


def run_fixed(args, scratch, port, rate, seconds, host):
    if args.generator == "oha":
        return run_oha(args, scratch, port, rate, seconds, host)
    return run_k6(args, scratch, port, rate, seconds, host)


def wrk_hosts_script(scratch, hosts):
    path = os.path.join(scratch, "hosts-rr.lua")
    with open(path, "w") as f:
        f.write("-- generated by benches/e2e/run.py: Host header round robin over a list\n")
        f.write("local hosts = {\n")
        for h in hosts:
            f.write(f'  "{h}",\n')
        f.write("}\n")
        f.write("local reqs = {}\n"
                "for i, h in ipairs(hosts) do reqs[i] = wrk.format('GET', '/', { Host = h }) end\n"
                "local n, i = #reqs, 0\n"
                "function request()\n  i = i % n + 1\n  return reqs[i]\nend\n")
    return path


# --------------------------------------------------------------------------------------------
# measurement


def measured(p, fn):
    """Runs fn() while measuring the target's CPU ticks and both cores' business."""
    c0 = core_times()
    t0 = cpu_ticks(p.pid) if p else (0, 0)
    res = fn()
    t1 = cpu_ticks(p.pid) if p else (0, 0)
    c1 = core_times()
    user, sys_ = t1[0] - t0[0], t1[1] - t0[1]
    res["cpu_s"] = (user + sys_) / CLK_TCK
    # The kernel's share of the proxy's CPU (syscalls, wake-ups, the network stack it runs).
    res["sys_pct"] = 100 * sys_ / (user + sys_) if (p and user + sys_) else float("nan")
    res["cpu_per_100k"] = res["cpu_s"] * 100_000 / res["requests"] if (p and res["requests"]) else float("nan")
    res["rss_mb"] = vm_hwm_kb(p.pid) / 1024 if p else float("nan")
    res["core_proxy"] = core_busy(c0, c1, PROXY_CORE)
    res["core_load"] = core_busy(c0, c1, LOAD_CORE)
    return res


def check_split(name, port, hosts, scenario):
    counts = count_split(port, hosts)
    total = sum(counts.values())
    r1, r2 = counts.get("hello-00001", 0), counts.get("hello-00002", 0)
    other = {k: v for k, v in counts.items() if k not in ("hello-00001", "hello-00002")}
    share = 100.0 * r2 / max(total, 1)
    line = (f"hello-00001 {r1}, hello-00002 {r2} ({100 - share:.1f}/{share:.1f})"
            + (f", other {other}" if other else ""))
    log(f"  split {name:<13} {line}")
    if other or abs(share - 10.0) > 1.0:
        die(f"scenario {scenario}: {name} does not split 90/10: {line}")
    return f"- {name}: {line}"


def fmt(v, digits):
    if v is None or v != v:
        return "—"
    return f"{v:,.{digits}f}"


def summarize(values, digits):
    vs = [v for v in values if v == v]
    if not vs:
        return "—", float("nan")
    med = statistics.median(vs)
    if len(vs) == 1:
        return fmt(med, digits), med
    return f"{fmt(med, digits)} ({fmt(min(vs), digits)}–{fmt(max(vs), digits)})", med


def table(title, rows, figures, note=""):
    """rows: {target: [result, ...]}; figures: [(key, label, digits)]. Returns markdown."""
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| target | reps | " + " | ".join(lbl for _, lbl, _ in figures) + " |")
    lines.append("|---|---:|" + "---:|" * len(figures))
    medians = {}
    for name, rs in rows.items():
        cells, medians[name] = [], {}
        for key, _, digits in figures:
            s, med = summarize([r.get(key, float("nan")) for r in rs], digits)
            cells.append(s)
            medians[name][key] = med
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    ratio_lines = []
    for w in ("weir", *sorted(VARIANTS)):
        for peer in ("nginx", "haproxy", "bare-pingora"):
            if w in medians and peer in medians:
                cells = []
                for key, _, _ in figures:
                    a, b = medians[w][key], medians[peer][key]
                    cells.append(f"{a / b:.2f}×" if (a == a and b == b and b != 0) else "—")
                ratio_lines.append(f"| {w} ÷ {peer} | | " + " | ".join(cells) + " |")
    for v in medians:
        if v in VARIANTS and "weir" in medians:
            cells = []
            for key, _, _ in figures:
                a, b = medians[v][key], medians["weir"][key]
                cells.append(f"{a / b:.2f}×" if (a == a and b == b and b != 0) else "—")
            ratio_lines.append(f"| {v} ÷ weir | | " + " | ".join(cells) + " |")
    if ratio_lines:
        lines.append("| *ratio (medians)* | | " + " | ".join("" for _ in figures) + " |")
        lines += ratio_lines
    lines.append("")
    return "\n".join(lines)


S1_FIG = [("rps", "req/s", 0), ("p50", "p50 ms", 2), ("p99", "p99 ms", 2),
          ("cpu_per_100k", "CPU s / 100k req", 2), ("sys_pct", "of which kernel %", 0),
          ("rss_mb", "peak RSS MB", 1), ("core_proxy", "core 1 (proxy) busy %", 0),
          ("core_load", "core 0 (load) busy %", 0), ("errors", "errors", 0)]
S2_FIG = [("rps", "achieved req/s", 0), ("p50", "p50 ms", 2), ("p99", "p99 ms", 2),
          ("cpu_per_100k", "CPU s / 100k req", 2), ("sys_pct", "of which kernel %", 0),
          ("core_proxy", "core 1 (proxy) busy %", 0), ("dropped", "dropped", 0), ("failed_pct", "failed %", 2)]
S3_FIG = [("rps", "req/s", 0), ("p99", "p99 ms", 2), ("cpu_per_100k", "CPU s / 100k req", 2),
          ("rss_mb", "peak RSS MB", 1), ("core_proxy", "core 1 (proxy) busy %", 0), ("errors", "errors", 0)]


# --------------------------------------------------------------------------------------------
# main


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model, os.cpu_count(), platform.release()


def tool_version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" with uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def results_name(args):
    """One file per scenario set (and variant set), overwritten by the next run of the same set:
    the latest figures; earlier ones are in git history."""
    name = "latest-" + "-".join(str(s) for s in args.scenarios)
    if VARIANTS:
        name += "-ab"
    return name + ".md"


def shown(path):
    """A path as a results file shows it: relative to the repo, else its file name only (no
    machine paths in committed results)."""
    try:
        rel = os.path.relpath(os.path.abspath(path), ROOT)
    except ValueError:
        rel = path
    return os.path.basename(path) if rel.startswith("..") else rel


def scrub(word):
    """A command-line word with any path in it (`PATH`, `NAME=PATH`, `NAME=PATH,VAR=V`) shown."""
    name, eq, rest = word.rpartition("=") if "=" in word.split(",")[0] else ("", "", word)
    path, comma, tail = rest.partition(",")
    if os.sep in path and os.path.exists(path):
        path = shown(path)
    return f"{name}{eq}{path}{comma}{tail}"


def which(name, extra=()):
    p = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if p:
        return p
    for e in extra:
        if os.access(e, os.X_OK):
            return e
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="alternating reps per scenario (default 5)")
    ap.add_argument("--duration", type=float, default=10, help="seconds of each measured run (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per fresh process (default 2)")
    ap.add_argument("--scenarios", default="1,2,3", help="comma-separated subset of 1,2,3 (default all)")
    ap.add_argument("--targets", default="weir,nginx,haproxy",
                    help="comma-separated, in the alternation order (default weir,nginx,haproxy)")
    ap.add_argument("--no-direct", action="store_true",
                    help="skip the backend-direct ceiling row of scenario 1")
    ap.add_argument("--rate", type=float, default=None,
                    help="scenario 2 rate in req/s (default: half the slowest target's scenario-1 median)")
    ap.add_argument("--max-rate", type=float, default=20000,
                    help="cap on the derived scenario-2 rate (default 20000; k6 on one shared core tops out near 8,500)")
    ap.add_argument("--quiet-wait", type=float, default=15,
                    help="max seconds to wait for idle cores before each run (default 15; 2 with --force)")
    ap.add_argument("--force", action="store_true", help="run even if the machine is busy")
    ap.add_argument("--weir", default=os.path.join(ROOT, "target", "release", "weir"))
    ap.add_argument("--peers", default=os.path.join(HERE, "peers"), help="folder of the peers' configs (default: benches/e2e/peers)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (configs, logs)")
    ap.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=PATH[,VAR=V]",
                    help="one more Weir target: another binary (e.g. before a change), added after `weir` "
                         "in the alternation; its ratios to weir are printed (repeatable)")
    ap.add_argument("--bare", default=None, metavar="PATH",
                    help="also run the bare pingora proxy (target/release/bare_pingora, built by run.sh) in "
                         "scenarios 1-2: Weir ÷ bare-pingora is what Weir's features cost over the framework")
    ap.add_argument("--generator", choices=("auto", "oha", "k6"), default="auto",
                    help="scenario 2 load generator: oha -q (holds ~25k req/s on one core) or k6 "
                         "constant-arrival-rate; auto = oha if found (default)")
    ap.add_argument("--oha", default=None, help="path of oha (default: PATH, then target/bench-tools/bin/oha)")
    args = ap.parse_args()

    args.scenarios = sorted({int(s) for s in args.scenarios.split(",") if s.strip()})
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [s for s in args.scenarios if s not in (1, 2, 3)]
    bad += [t for t in args.targets if t not in ("weir", "nginx", "haproxy")]
    for name, _, _ in args.variant:
        VARIANTS.add(name)
        at = args.targets.index("weir") + 1 if "weir" in args.targets else len(args.targets)
        args.targets.insert(at, name)
    if args.bare:
        if not os.access(args.bare, os.X_OK):
            ap.error(f"--bare: {args.bare} is not an executable")
        args.targets.append("bare-pingora")
    if bad:
        ap.error(f"unknown scenario or target: {bad}")
    if args.force and args.quiet_wait == 15:
        args.quiet_wait = 2

    args.nginx = which("nginx")
    args.haproxy = which("haproxy")
    args.wrk = which("wrk")
    args.k6 = which("k6")
    if not os.access(args.weir, os.X_OK):
        die(f"no weir binary at {args.weir} (run benches/e2e/run.sh, which builds it)")
    if not args.nginx:
        die("nginx is needed for the backends (apt-get install nginx)")
    if not args.wrk and (1 in args.scenarios or 3 in args.scenarios):
        warn("wrk is not installed: scenarios 1 and 3 are skipped")
        args.scenarios = [s for s in args.scenarios if s == 2]
    args.oha = args.oha or which("oha", [os.path.join(ROOT, "target", "bench-tools", "bin", "oha")])
    if args.generator == "auto":
        args.generator = "oha" if args.oha else "k6"
    if 2 in args.scenarios and not (args.oha if args.generator == "oha" else args.k6):
        warn(f"{args.generator} is not installed (run.sh installs oha and k6): scenario 2 is skipped")
        args.scenarios = [s for s in args.scenarios if s != 2]
    if shutil.which("taskset") is None:
        die("taskset (util-linux) is needed")
    if (os.cpu_count() or 1) < 2:
        die("needs two cores (proxy on core 1, load on core 0)")

    busy = other_heavy()
    if busy:
        if args.force:
            warn(f"{busy}; going on because of --force: the figures are NOT valid measurements")
        else:
            log(f"waiting up to 180 s for the machine to settle ({busy}) ...")
            deadline = time.time() + 180
            while busy and time.time() < deadline:
                time.sleep(5)
                busy = other_heavy()
            if busy:
                die(f"refusing to benchmark: {busy}. Wait, or pass --force for a smoke run.")

    cmdline = os.environ.get("WEIR_E2E_CMD") or "python3 benches/e2e/run.py " + " ".join(sys.argv[1:])
    # No machine paths in what is committed: paths outside the repo shown by file name.
    cmdline = " ".join(scrub(w) for w in cmdline.split(" "))
    model, ncpu, kernel = machine_info()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    header = [
        f"# Weir end-to-end benchmark {stamp}",
        "",
        f"- command: `{cmdline}`",
        f"- machine: {model}, {ncpu} cores, kernel {kernel}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}" + (" (**--force: machine was busy**)" if busy else ""),
        f"- weir: {shown(args.weir)} (git {git_rev()}), `--threads 1`; "
        f"nginx: {tool_version([args.nginx, '-v'])}; "
        f"haproxy: {tool_version([args.haproxy, '-v']) if args.haproxy else 'not installed'}; "
        f"wrk: {tool_version([args.wrk, '-v']) if args.wrk else 'not installed'}; "
        f"k6: {tool_version([args.k6, 'version']) if args.k6 else 'not installed'}; "
        f"oha: {tool_version([args.oha, '--version']) if args.oha else 'not installed'}; "
        f"scenario-2 generator: {args.generator}",
        f"- proxy alone on core {PROXY_CORE}; backends (nginx, 1 worker) and load generators on core {LOAD_CORE}; "
        f"reps {args.reps}, {args.duration:g} s runs, {args.warmup:g} s warm-up per fresh process; "
        f"targets alternate {' '.join(args.targets)}",
        "- figures: median (min–max) over reps; CPU = the proxy's user+sys seconds (process tree, /proc) "
        "per 100,000 requests served; peak RSS = VmHWM of the largest process of its tree (nginx: the worker); "
        "ratios are Weir's median ÷ the peer's median (req/s: higher is better; the rest: lower is better)",
        "",
    ]
    log("\n".join(header))

    scratch = tempfile.mkdtemp(prefix="weir-e2e-")
    for d in ("run", "logs"):
        os.makedirs(os.path.join(scratch, d), exist_ok=True)
    ports = {"b1": free_port(), "b2": free_port()}
    backend_cfg = os.path.join(scratch, "backend-nginx.conf")
    with open(backend_cfg, "w") as f:
        f.write(peer_text(args.peers, "backend-nginx.conf", ports, scratch))

    def on_signal(signum, _frame):
        stop_all()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    sections, raw_lines, ok = [], [], False
    try:
        backend = start([args.nginx, "-p", scratch, "-e", f"{scratch}/logs/backend-stderr.log", "-c", backend_cfg],
                        LOAD_CORE, os.path.join(scratch, "logs", "backend.log"))
        if not (wait_ready(ports["b1"], "x", backend) and wait_ready(ports["b2"], "x", backend)):
            die(f"the backend nginx did not start (logs in {scratch}/logs)")
        log(f"backends: nginx on 127.0.0.1:{ports['b1']} (hello-00001) and :{ports['b2']} (hello-00002), "
            f"core {LOAD_CORE}; scratch {scratch}")

        def new_ports():
            ports["proxy"], ports["admin"] = free_port(), free_port()

        def one_run(target, ready_host, warm, measure, label):
            new_ports()
            wait_quiet(args.quiet_wait)
            with Running(target, scratch, ports, ready_host) as r:
                warm()
                res = measured(r.p, measure)
            res["target"] = target.name
            msg = (f"  {label} {target.name:<13} " + " ".join(
                f"{k}={fmt(res.get(k), 2)}" for k in ("rps", "p50", "p99", "cpu_per_100k", "sys_pct", "rss_mb",
                                                        "core_proxy", "core_load", "errors", "dropped")
                if k in res))
            log(msg)
            raw_lines.append(msg.strip())
            return res

        s1_rows = {}
        rate = args.rate
        if 1 in args.scenarios or 2 in args.scenarios:
            targets = make_targets(args, scratch, ports, many=False)
            log("\n## Split check (scenarios 1-2): 10,000 requests over 8 connections, Host " + HOST)
            splits = []
            for t in targets:
                new_ports()
                with Running(t, scratch, ports, HOST):
                    splits.append(check_split(t.name, ports["proxy"], [HOST], "1-2"))
                    st, _ = get(ports["proxy"], "nope.example.com")
                    if st != 404:
                        die(f"{t.name} answers {st} for an unknown host, not 404")
            split_note = ("Split check, 10,000 requests over 8 connections (X-Revision counted):\n"
                          + "\n".join(splits))

            if 1 in args.scenarios:
                log(f"\n## Scenario 1: wrk -t1 -c64 -d{args.duration:g}s keep-alive, Host {HOST}")
                order = list(targets)
                for rep in range(1, args.reps + 1):
                    for t in order:
                        res = one_run(t, HOST, lambda: run_wrk(args, ports["proxy"], args.warmup, host=HOST),
                                      lambda: run_wrk(args, ports["proxy"], args.duration, host=HOST),
                                      f"s1 rep {rep}")
                        s1_rows.setdefault(t.name, []).append(res)
                    if not args.no_direct:
                        wait_quiet(args.quiet_wait)
                        res = measured(None, lambda: run_wrk(args, ports["b1"], args.duration, host=HOST))
                        log(f"  s1 rep {rep} direct        rps={fmt(res['rps'], 0)} p99={fmt(res['p99'], 2)} "
                            f"load core={fmt(res['core_load'], 0)}%")
                        s1_rows.setdefault("backend direct (ceiling)", []).append(res)
                sections.append(table(f"Scenario 1: wrk -t1 -c64 -d{args.duration:g}s, keep-alive, one Host",
                                      s1_rows, S1_FIG, split_note))
                log("\n" + sections[-1])

            if 2 in args.scenarios:
                if rate is None:
                    meds = [statistics.median([r["rps"] for r in rs]) for name, rs in s1_rows.items()
                            if not name.startswith("backend") and all(r["rps"] > 0 and r["errors"] == 0 for r in rs)]
                    if meds:
                        rate = min(0.5 * min(meds), args.max_rate)
                        why = (f"half the slowest target's scenario-1 median ({min(meds):,.0f})"
                               + (f", capped at --max-rate {args.max_rate:,.0f}" if 0.5 * min(meds) > args.max_rate else ""))
                    else:
                        rate = min(10000, args.max_rate)
                        why = "no scenario-1 figures; default"
                else:
                    why = "--rate"
                rate = max(100, round(rate, -2))
                s2_rows = {}
                gname = args.generator
                # Can the generator on the load core hold this rate at all? Ask it against the backend direct;
                # if it falls behind, lower a derived rate to 80% of what it achieved (once).
                for attempt in (1, 2):
                    new_ports()
                    wait_quiet(args.quiet_wait)
                    gen = measured(None, lambda: run_fixed(args, scratch, ports["b1"], rate, args.duration, HOST))
                    short = gen["dropped"] > 0.01 * rate * args.duration or gen["rps"] < 0.97 * rate
                    log(f"  generator check at {rate:,.0f} req/s against the backend: achieved {gen['rps']:,.0f}, "
                        f"dropped {gen['dropped']:,}, load core {gen['core_load']:.0f}%")
                    if short and args.rate is None and attempt == 1:
                        new_rate = max(100, round(0.8 * gen["rps"], -2))
                        warn(f"{gname} cannot hold {rate:,.0f} req/s on core {LOAD_CORE}; lowering the rate to {new_rate:,.0f}")
                        why += f"; lowered to 80% of what {gname} achieved against the backend direct"
                        rate = new_rate
                        continue
                    if short:
                        warn(f"{gname} falls behind {rate:,.0f} req/s even against the backend: scenario 2 is generator-bound")
                    break
                s2_rows["backend direct (generator check)"] = [gen]
                log(f"\n## Scenario 2: {gname} fixed rate {rate:,.0f} req/s ({why}), {args.duration:g} s")
                for rep in range(1, args.reps + 1):
                    for t in targets:
                        res = one_run(t, HOST,
                                      lambda: run_fixed(args, scratch, ports["proxy"], rate, max(args.warmup, 1), HOST),
                                      lambda: run_fixed(args, scratch, ports["proxy"], rate, args.duration, HOST),
                                      f"s2 rep {rep}")
                        s2_rows.setdefault(t.name, []).append(res)
                # the generator check row last, as a reference
                s2_rows["backend direct (generator check)"] = s2_rows.pop("backend direct (generator check)")
                how = ("oha -q over 64 connections, one worker thread, latency from each request's scheduled "
                       "start (`--latency-correction`); `dropped` = requests the rate called for that were not sent"
                       if gname == "oha" else
                       "k6 constant-arrival-rate over 64 VUs (64 connections, as wrk); `dropped` = k6's dropped iterations")
                note = (f"Fixed rate {rate:,.0f} req/s ({why}); {how}. `dropped` > 0: the generator or the proxy "
                        f"fell behind the rate, and the figures of that row are not at the fixed rate. The "
                        f"generator-check row is {gname} straight to one backend port (one rep).")
                sections.append(table(f"Scenario 2: fixed rate {rate:,.0f} req/s ({gname})", s2_rows, S2_FIG, note))
                log("\n" + sections[-1])

        if 3 in args.scenarios:
            targets = make_targets(args, scratch, ports, many=True)
            hosts = hot_hosts()
            script = wrk_hosts_script(scratch, hosts)
            log(f"\n## Scenario 3: {N_SERVICES:,} services configured, wrk round robin over {N_HOT:,} hosts")
            splits = []
            for t in targets:
                new_ports()
                t0 = time.time()
                with Running(t, scratch, ports, hosts[0]):
                    ready = time.time() - t0
                    splits.append(check_split(t.name, ports["proxy"], hosts, "3") + f"; ready in {ready:.1f} s")
            s3_rows = {}
            for rep in range(1, args.reps + 1):
                for t in targets:
                    res = one_run(t, hosts[0], lambda: run_wrk(args, ports["proxy"], args.warmup, script=script),
                                  lambda: run_wrk(args, ports["proxy"], args.duration, script=script),
                                  f"s3 rep {rep}")
                    s3_rows.setdefault(t.name, []).append(res)
            note = (f"{N_SERVICES:,} services, each 90/10 over two revisions (Weir: services + 20,000 revisions; "
                    f"nginx: a server block and an upstream each; haproxy: a host map and a backend each); "
                    f"wrk -t1 -c64 -d{args.duration:g}s, Host round robin over every 10th service. "
                    "Split check, 10,000 requests over 8 connections, 10 per hot host, and start-up time "
                    "(start to first 200):\n" + "\n".join(splits))
            sections.append(table(f"Scenario 3: {N_SERVICES:,} services, {N_HOT:,} hot hosts (wrk -c64)",
                                  s3_rows, S3_FIG, note))
            log("\n" + sections[-1])
        ok = True
    finally:
        stop_all()
        if sections:
            os.makedirs(args.results, exist_ok=True)
            path = os.path.join(args.results, results_name(args))
            with open(path, "w") as f:
                f.write("\n".join(header) + "\n" + "\n".join(sections))
                f.write("\n### Every run\n\n```\n" + "\n".join(raw_lines) + "\n```\n")
                if not ok:
                    f.write("\n**The run stopped early; the tables above are incomplete.**\n")
            log(f"results written to {os.path.relpath(path, ROOT)}")
        if ok and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"scratch kept: {scratch}")


if __name__ == "__main__":
    main()
