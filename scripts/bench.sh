#!/usr/bin/env bash
# The full benchmark: Tidings against the Node.js ws/SSE peer and the raw-socket ceiling,
# all built/installed here and run one after another on this machine. Prints the table
# (see docs/performance.md) and writes bench-results.json. Takes a few minutes.
# `scripts/bench.sh --pin` puts servers on CPU 0 and the load generator on CPU 1.
# `scripts/bench.sh notify [flags]` runs the notification scenario instead (issue #10:
# mentions to 200 signed-in accounts among 1,000 connections under 100 chat messages/s);
# `scripts/bench.sh cluster [flags]` cluster mode (Redis and 3 servers) against embedded;
# `scripts/bench.sh capacity [flags]` 19,000 connections (half WS, half SSE) at 10 events/s.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --bench
. scripts/env.sh
cargo build --release -p server -p bench
case "${1:-}" in
  notify | cluster | capacity)
    scenario=$1
    shift
    exec "$TARGET_DIR/release/tidings-bench" "$scenario" --tidings "$TARGET_DIR/release/tidings" "$@" ;;
esac
exec "$TARGET_DIR/release/tidings-bench" compare --tidings "$TARGET_DIR/release/tidings" \
  --node-peer bench/peers/node-peer.js --json bench-results.json "$@"
