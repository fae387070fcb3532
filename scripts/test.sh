#!/usr/bin/env bash
# Runs every Tidings test: unit and integration tests (cargo), the release build of the
# browser app with its size budget, and the Playwright end-to-end tests in Debian's
# Chromium. Installs whatever is missing first (see scripts/setup.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
. scripts/env.sh

step() { printf '\n\033[1;35m== %s\033[0m\n' "$*"; }

step "unit + integration tests (cargo)"
# The app crate's library is tested natively (protocol and validation); its wasm build
# only ever goes through trunk, so csr and ssr are never enabled together.
cargo test -p app -p wire -p server -p bench 2>&1 | tee /tmp/tidings-cargo-test.log

step "fuzzing smoke run (every parser of peer input, 10 s each; scripts/fuzz.sh long for the real run)"
scripts/fuzz.sh smoke

step "browser app (trunk, release)"
(cd app && trunk build --release)
scripts/wasm-size.sh

step "end-to-end (Playwright, Chromium)"
cargo build -p server
export TIDINGS_BIN="$TARGET_DIR/debug/tidings" TIDINGS_STATIC="$PWD/app/dist"
(cd end2end && npx playwright test) 2>&1 | tee /tmp/tidings-e2e.log

step "benchmark smoke run (tiny N: keeps tidings-bench working; figures mean nothing)"
cargo build -p bench
"$TARGET_DIR/debug/tidings-bench" compare --smoke --tidings "$TARGET_DIR/debug/tidings" --node-peer bench/peers/node-peer.js
# Slow consumers and a publish flood with the server's real limits on (asserts: nothing lost,
# stalled clients dropped by the write timeout, the flood refused with 429).
"$TARGET_DIR/debug/tidings-bench" abuse --smoke --tidings "$TARGET_DIR/debug/tidings"

# One closing line for the whole run.
cargo_passed=$(grep -o '[0-9]* passed' /tmp/tidings-cargo-test.log | awk '{s+=$1} END {print s+0}')
e2e_passed=$(grep -Eo '^ +[0-9]+ passed' /tmp/tidings-e2e.log | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $((cargo_passed + e2e_passed)) passed, 0 failed"
