#!/usr/bin/env python3
"""The training run of a profile-guided build (benches/pgo.sh): drives an instrumented `weir`
through the request shapes a proxy sees most, so that LLVM lays out and inlines the code for
them.

    benches/pgo_train.py --weir target/pgo-gen/release/weir [--requests 20000]

Four runs of the same mix, one process each (an instrumented binary writes its profile when
it exits; `-Cprofile-generate`'s default file name merges the runs): the access log on and
off, through pingora's proxy and through `--fast-path`. The mix, over 4 kept-alive
connections to loopback backends (benches/request_cost.py's): GETs split 90/10 between two
revisions, one in 10 a POST with a 128-byte body, one in 20 an unknown host (Weir's own 404),
one in 25 an HTTP/1.0 GET with `Connection: keep-alive`. Bounded in count; stops by itself.
Python 3 stdlib only.
"""

import argparse
import os
import socket
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import request_cost as rc  # noqa: E402
from benchutil import free_port  # noqa: E402

HOST = rc.HOST


def request(i):
    """The i-th request of the mix and the status it must get."""
    if i % 20 == 0:
        return b"GET /missing HTTP/1.1\r\nHost: nowhere.example.com\r\n\r\n", 404
    if i % 10 == 1:
        body = b"x" * 128
        return (f"POST /submit HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body, 200
    if i % 25 == 2:
        return (f"GET /old HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n").encode(), 200
    return (f"GET /?n={i} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: pgo-train\r\n"
            "Accept: */*\r\n\r\n").encode(), 200


def drive(port, count, conns=4):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
    bufs = [b""] * conns
    for i in range(count):
        k = i % conns
        req, want = request(i)
        socks[k].sendall(req)
        status, bufs[k] = rc.read_response(socks[k], bufs[k])
        if status != want:
            raise SystemExit(f"request {i}: status {status}, expected {want}")
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weir", required=True, help="the instrumented weir binary")
    ap.add_argument("--requests", type=int, default=20000, help="requests per run")
    args = ap.parse_args()
    backends = rc.start_backends()
    with tempfile.TemporaryDirectory() as scratch:
        for name in rc.WEIR_TARGETS:
            port = free_port()
            cmd = rc.target_cmd(name, argparse.Namespace(weir=args.weir), port, backends, scratch)
            p = rc.run(cmd)
            try:
                rc.wait_ready(port)
                drive(port, args.requests)
            finally:
                rc.stop(p)
            if p.returncode not in (0, -2, 130):
                raise SystemExit(f"{name}: weir exited with {p.returncode}")
            print(f"trained: {name}, {args.requests} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
