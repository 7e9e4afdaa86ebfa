"""Helpers shared by the standalone bench scripts in this folder (python3 stdlib only)."""

import socket


def free_port():
    """A loopback port free right now (the OS picks it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    """Resident set size of `pid` in KiB (VmRSS), 0 if it is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
