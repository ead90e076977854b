#!/usr/bin/env bash
# Builds the release binaries and ships them stripped, the debug info split
# out beside them (for a backtrace or perf later: `gdb -s dist/debug/...`).
#   deploy/release.sh            -> dist/tunnel-server, dist/tunnel-client,
#                                   dist/debug/*.debug (linked by .gnu_debuglink)
# Needs binutils (objcopy), which build-essential brings.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
cargo build --release --locked --bin tunnel-server --bin tunnel-client
mkdir -p "$out/debug"
for bin in tunnel-server tunnel-client; do
  objcopy --only-keep-debug "target/release/$bin" "$out/debug/$bin.debug"
  objcopy --strip-debug --strip-unneeded \
    --add-gnu-debuglink="$out/debug/$bin.debug" "target/release/$bin" "$out/$bin"
  chmod 755 "$out/$bin"
  echo "$out/$bin: $(stat -c %s "$out/$bin") bytes ($("$out/$bin" --version))"
done
