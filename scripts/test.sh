#!/usr/bin/env bash
# Runs every Tidings test: unit and integration tests (cargo; the cluster tests with their
# own redis-server and nginx), a fuzzing smoke run of every parser of peer input, the
# release build of the browser app with its size budget, the Playwright end-to-end tests in
# Debian's Chromium, and smoke runs of the benchmark tool. Installs whatever is missing first
# (see scripts/setup.sh --test).
#
# Every step runs even when an earlier one fails; the closing line counts what the runners
# reported, and the exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test || exit 1
. scripts/env.sh
# The cluster tests skip themselves when redis-server or nginx is missing; here they must run.
export TIDINGS_REQUIRE_CLUSTER=1

LOGS=$(mktemp -d /tmp/tidings-test.XXXXXX)
failed_steps=()
step() {
  local name=$1
  shift
  printf '\n\033[1;35m== %s\033[0m\n' "$name"
  if ! "$@" 2>&1 | tee "$LOGS/$(echo "$name" | tr -c 'a-z0-9' '-').log"; then
    failed_steps+=("$name")
  fi
}

step "formatting (cargo fmt --check, the workspace and the fuzz crate)" \
  bash -c 'cargo fmt --all --check && cargo fmt --manifest-path fuzz/Cargo.toml --all --check'
# The app crate's library is tested natively (protocol, validation, the resume rule); its
# wasm build only ever goes through trunk, so csr and ssr are never enabled together.
step "unit + integration tests (cargo)" cargo test -p protocol -p app -p wire -p server -p bench
step "fuzzing smoke run (every parser of peer input, 10 s each; scripts/fuzz.sh long for the real run)" \
  scripts/fuzz.sh smoke
step "browser app and lab (trunk, release)" bash -c 'scripts/build-app.sh && scripts/wasm-size.sh'
step "server for the end-to-end tests" cargo build -p server -p bench
export TIDINGS_BIN="$TARGET_DIR/debug/tidings" TIDINGS_STATIC="$PWD/app/dist"
step "end-to-end (Playwright, Chromium)" bash -c 'cd end2end && npx playwright test'
# The front-end dev loop: scripts/dev.sh on free ports (trunk serve with a debug build of the
# app), and the Playwright spec that drives the app through trunk's proxy: once with the
# server dev.sh starts, once with a server that refuses trunk's origin (--trunk-only).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dev_run() { # MODE (full|trunk-only) GREP
  local api ui dev rc
  api=$(free_port)
  ui=$(free_port)
  if [ "$1" = full ]; then
    scripts/dev.sh --port "$ui" --api-port "$api" -- --no-demo > "$LOGS/dev-$1.out" 2>&1 &
  else
    scripts/dev.sh --trunk-only --port "$ui" --api-port "$api" > "$LOGS/dev-$1.out" 2>&1 &
  fi
  dev=$!
  for _ in $(seq 900); do
    curl -sf "http://127.0.0.1:$ui/" >/dev/null && { [ "$1" != full ] || curl -sf "http://127.0.0.1:$api/healthz" >/dev/null; } && break
    kill -0 "$dev" 2>/dev/null || { cat "$LOGS/dev-$1.out"; return 1; }
    sleep 1
  done
  (cd end2end && TIDINGS_DEV_UI="http://127.0.0.1:$ui" TIDINGS_DEV_API_PORT="$api" \
    TIDINGS_DEV_FULL=$([ "$1" = full ] && echo 1) npx playwright test dev.spec.ts -g "$2")
  rc=$?
  kill "$dev" 2>/dev/null
  wait "$dev" 2>/dev/null
  return $rc
}
dev_loop() { dev_run full "goes live" && dev_run trunk-only "refuses"; }
step "front-end dev loop (scripts/dev.sh: trunk serve + Playwright through its proxy)" dev_loop

step "benchmark smoke run (tiny N: keeps tidings-bench working; figures mean nothing)" \
  "$TARGET_DIR/debug/tidings-bench" compare --smoke --tidings "$TARGET_DIR/debug/tidings" --node-peer bench/peers/node-peer.js
# Slow consumers and a publish flood with the server's real limits on (asserts: nothing lost,
# stalled clients dropped by the write timeout, the flood refused with 429).
step "abuse smoke run" "$TARGET_DIR/debug/tidings-bench" abuse --smoke --tidings "$TARGET_DIR/debug/tidings"
# Cluster mode against embedded (its own redis-server and servers), and the capacity run
# (raised open-file limit, half WS half SSE): tiny N, so the tools keep working.
step "cluster benchmark smoke run" "$TARGET_DIR/debug/tidings-bench" cluster --smoke --tidings "$TARGET_DIR/debug/tidings"
step "capacity benchmark smoke run" "$TARGET_DIR/debug/tidings-bench" capacity --smoke --tidings "$TARGET_DIR/debug/tidings"
# Mentions to signed-in accounts among anonymous readers (asserts: none lost or misdelivered).
step "notification smoke run" "$TARGET_DIR/debug/tidings-bench" notify --smoke --tidings "$TARGET_DIR/debug/tidings"

# One closing line for the whole run, from what the runners themselves reported.
sum() { cat "$LOGS"/*.log | grep -Eo "$1" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}'; }
passed=$(( $(sum 'test result: [a-z]+\. [0-9]+ passed') + $(sum '^ +[0-9]+ passed') ))
failed=$(( $(sum '; [0-9]+ failed;') + $(sum '^ +[0-9]+ failed') ))
echo
echo "tests: $passed passed, $failed failed"
if [ ${#failed_steps[@]} -gt 0 ]; then
  printf 'FAILED step: %s\n' "${failed_steps[@]}"
  exit 1
fi
