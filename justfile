# weir — common tasks. `just --list` shows them.

# Build the weir binary (the build script builds and embeds the plugin pack).
build:
    cargo build --release

# A profile-guided release build (PGO), trained on the peer bench's loads, into
# target/pgo/<host triple>/release/weir (host/benches/pgo.sh: two LTO builds, so about
# twice `just build` from nothing; needs the peer bench's Debian packages).
release-pgo:
    host/benches/pgo.sh

# Build only the plugin pack and the test fixtures (wasm32-wasip2 components).
plugins:
    cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir target/wasm
    cargo build --release --target wasm32-wasip2 --manifest-path tests/fixtures/Cargo.toml --target-dir target/wasm

# Build the example plugins (examples/plugins/{rust,js,python,c}) into
# target/example-plugins/, installing their pinned toolchains under target/toolchains/ first
# when missing. Only some languages: `examples/plugins/build.sh js c`.
example-plugins:
    examples/plugins/build.sh

# Run every test: host and integration tests (the README's command), then the plugins'
# own unit tests natively (CI runs both).
test:
    cargo test
    cargo test --manifest-path plugins/Cargo.toml --target "$(rustc -vV | sed -n 's/^host: //p')" --target-dir target/native

# Format check and clippy with warnings denied, host and plugins.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --target-dir target/wasm -- -D warnings

# Benchmarks (figures go to BENCHMARKS.md with the command that made them): one decision
# per balancer (decision), a fixed decision loop for callgrind (pick_loop), memory per idle
# WebSocket tunnel (tunnel_memory), WebSocket echo p99 through weir vs direct (ws_echo),
# start time and memory with 1,000 pools (pool_scale), reload of a 10,000-backend pool
# (reload), CPU per health probe alone (probe) and with 1,000 probed backends in a real
# weir (health_scale). The soak has a recipe of its own.
bench:
    cargo bench --bench decision --bench pick_loop --bench tunnel_memory --bench ws_echo --bench pool_scale --bench reload --bench probe --bench health_scale

# Live plugin swaps: API call to the first request placed by the new plugin (code in
# memory, in the disk cache, compiled), and request p50/p99 at a fixed rate (open loop)
# with a swap every second vs none, alternately (host/benches/swap.rs; release build).
bench-swap:
    cargo bench --bench swap

# Connection churn (one-request connections, keep-alive, WebSockets, bursts) through a
# real weir for SOAK_S seconds (default 600): RSS and open fds at the start and the end.
soak:
    cargo bench --bench soak

# Instructions per decision for every pack balancer at 10 to 10,000 backends, what
# passive health adds to a successful request, and instructions per proxied HTTP/1.1
# request through the real server and client code (request_instructions), counted by
# callgrind (stable where wall clock is not; needs valgrind).
bench-instructions:
    host/benches/instructions.sh
    host/benches/passive.sh
    cargo bench --bench request_instructions

# weir, nginx and HAProxy (Debian's) side by side on one origin in one run: HTTP/1.1,
# h2c, HTTPS, TLS handshakes, L4, p99 at a fixed rate, idle WebSocket memory, each with
# its issue's target. ROUNDS=3 DURATION=10 PARTS=h1,h2c,... (host/benches/peers/peers.py
# says what each part measures); the table is written under target/peers/. Needs
# `apt-get install nginx haproxy wrk nghttp2-client iperf3 curl openssl strace
# python3-websockets` (not installed by .ci/run) and builds weir and oha if missing.
# `PGO=1 just peers` runs the profile-guided build (`just release-pgo`) instead.
peers:
    host/benches/peers/run.sh

# Three demo backends behind the proxy on 127.0.0.1:8080.
demo:
    cargo run -- demo
