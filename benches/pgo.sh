#!/usr/bin/env bash
# A profile-guided release build of weir, in target/pgo/release/weir:
#   1. an instrumented build (-Cprofile-generate) in target/pgo-gen;
#   2. the training run, benches/pgo_train.py (the common request shapes through pingora's
#      proxy and the fast path, access log on and off; about a minute);
#   3. the profile merged with the llvm-profdata of rustc's own LLVM major version
#      ($PROFDATA, rustup's llvm-tools, or Debian's llvm-N, installed with apt-get when
#      missing);
#   4. the release build again with -Cprofile-use, same profile (fat LTO, one codegen unit).
# Each build compiles every dependency with its flags: about 10 minutes each on two cores.
#
# usage: benches/pgo.sh            (then compare: docs/performance.md, "Profile-guided build")
set -euo pipefail
cd "$(dirname "$0")/.."

# llvm-profdata of rustc's LLVM: $PROFDATA if set, else rustup's llvm-tools component
# (`rustup component add llvm-tools`, what the container build uses), else Debian's llvm-N.
major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=${PROFDATA:-}
if [ -z "$profdata" ]; then
  for p in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata; do
    if [ -x "$p" ]; then profdata=$p; fi
  done
fi
[ -n "$profdata" ] || profdata=$(command -v "llvm-profdata-$major" || true)
if [ -z "$profdata" ]; then
  echo "installing llvm-$major (for llvm-profdata-$major, matching rustc's LLVM) ..." >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "llvm-$major" >&2
  profdata=$(command -v "llvm-profdata-$major") || {
    echo "no llvm-profdata-$major: a profile-guided build needs the profdata tool of rustc's LLVM ($major)" >&2
    exit 1
  }
fi

data="$PWD/target/pgo-data"
rm -rf "$data" && mkdir -p "$data"
RUSTFLAGS="-Cprofile-generate=$data" \
  cargo build --release --locked --bin weir --target-dir target/pgo-gen
# The build's own instrumented programs (build scripts, proc macros) wrote profiles into
# $data too; the training run writes weir's under its own name, and only that is merged.
LLVM_PROFILE_FILE="$data/train-%m.profraw" \
  python3 benches/pgo_train.py --weir target/pgo-gen/release/weir
"$profdata" merge -o "$data/weir.profdata" "$data"/train-*.profraw
RUSTFLAGS="-Cprofile-use=$data/weir.profdata" \
  cargo build --release --locked --bin weir --target-dir target/pgo
echo "target/pgo/release/weir: built with the profile $data/weir.profdata" >&2
