#!/usr/bin/env bash
# A profile-guided release build of weir (PGO, `just release-pgo`): rustc's
# `-Cprofile-generate` build, trained on the peer bench's loads, then the release build
# again with `-Cprofile-use`. LLVM then lays out and inlines the hot paths by what they
# did under load rather than by guesses. The figures it changes are in BENCHMARKS.md
# ("Profile-guided optimisation").
#
#   host/benches/pgo.sh        # -> target/pgo/<host triple>/release/weir
#
# Training: one round of the peer bench (host/benches/peers/peers.py: PARTS h1, h2c, https,
# handshakes, l4, ws; 3 s each) against the instrumented weir: keep-alive HTTP/1.1, h2c,
# HTTPS, TLS handshakes, L4 bulk and WebSockets through the plugin pack's round-robin. So
# it needs what that bench needs (nginx, haproxy, wrk, h2load, iperf3, curl, openssl,
# python3-websockets), and llvm-profdata from rustup's llvm-tools (added when missing).
# The two builds go to target/pgo-gen and target/pgo (each about as long as a release
# build from nothing: LTO), so target/release is left as it is. `--target` keeps the
# profile flags off build scripts and proc macros; the plugin pack's nested build drops
# them too (host/build_support.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$TRIPLE/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
    rustup component add llvm-tools
fi
RAW=$ROOT/target/pgo-gen/raw
PROFILE=$ROOT/target/pgo/weir.profdata
rm -rf "$RAW"
mkdir -p "$RAW" "$ROOT/target/pgo"

echo "1/3 the instrumented build (target/pgo-gen)"
CARGO_TARGET_DIR=$ROOT/target/pgo-gen RUSTFLAGS="-Cprofile-generate=$RAW" \
    cargo build --release --target "$TRIPLE" --bin weir

echo "2/3 training: one round of the peer bench against it"
OUT=$ROOT/target/pgo-gen/train WEIR=$ROOT/target/pgo-gen/$TRIPLE/release/weir FLOOR= \
    ROUNDS=1 DURATION=3 PARTS=h1,h2c,https,handshakes,l4,ws WS_CONNS=1000 STRACE_SECS=1 \
    /usr/bin/python3 host/benches/peers/peers.py > "$ROOT/target/pgo-gen/train.log" 2>&1 ||
    { tail -20 "$ROOT/target/pgo-gen/train.log"; exit 1; }
if ! ls "$RAW"/*.profraw > /dev/null 2>&1; then
    echo "no profile was written (weir did not exit cleanly?): see target/pgo-gen/train.log" >&2
    exit 1
fi
"$PROFDATA" merge -o "$PROFILE" "$RAW"

echo "3/3 the release build with the profile (target/pgo)"
CARGO_TARGET_DIR=$ROOT/target/pgo RUSTFLAGS="-Cprofile-use=$PROFILE" \
    cargo build --release --target "$TRIPLE" --bin weir
echo "built: target/pgo/$TRIPLE/release/weir"
