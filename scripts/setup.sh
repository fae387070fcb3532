#!/usr/bin/env bash
# Installs everything Tidings needs to build (and, with --test, to test), skipping what is
# already present at the right version. Safe to run again and again.
#
#   scripts/setup.sh          build tools: wasm target, trunk, wasm-bindgen-cli, wasm-opt
#   scripts/setup.sh --test   also Chromium (apt) and the Playwright packages (npm)
#
# Only crates.io, npm and Debian apt are used: nothing downloads prebuilt binaries from
# elsewhere (trunk's own tool download and `npx playwright install` do not work here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/env.sh

say() { printf '\033[1;36m[setup]\033[0m %s\n' "$*"; }

# --- Rust side -------------------------------------------------------------------------
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if ! trunk --version 2>/dev/null | grep -q '^trunk 0\.21\.'; then
  # 0.22 needs a newer rustc than this machine has.
  say "installing trunk 0.21 (takes ~11 minutes once)"
  cargo install trunk --locked --version '~0.21'
fi

# wasm-bindgen-cli must be exactly the library version in Cargo.lock, or trunk tries to
# download one. Not --locked: its lockfile pins a crate version the registry mirror lacks.
WBG=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if ! grep -q "wasm_bindgen = \"$WBG\"" app/Trunk.toml; then
  echo "app/Trunk.toml pins a wasm_bindgen version other than Cargo.lock's $WBG: update it" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WBG" ]; then
  say "installing wasm-bindgen-cli $WBG (takes ~3 minutes once)"
  cargo install wasm-bindgen-cli --version "$WBG" --force
fi

# wasm-opt from npm's binaryen@132: Debian's binaryen is too old and produces a wasm that
# fails to load. Installed under .tools/ and put first on PATH by scripts/env.sh.
if ! wasm-opt --version 2>/dev/null | grep -q 'version_132'; then
  say "installing wasm-opt (npm binaryen@132)"
  mkdir -p .tools
  [ -f .tools/package.json ] || echo '{"name":"tidings-tools","private":true}' > .tools/package.json
  npm install --prefix .tools --no-audit --no-fund --silent binaryen@132
fi

# --- Test side -------------------------------------------------------------------------
if [ "${1:-}" = "--test" ]; then
  # Chromium for Playwright; Redis and nginx for the cluster tests (the tests start their
  # own instances; no system service is used).
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing from Debian: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -d end2end/node_modules/@playwright/test ] || [ end2end/package-lock.json -nt end2end/node_modules/.package-lock.json ]; then
    say "installing Playwright (npm ci in end2end/)"
    (cd end2end && npm ci --no-audit --no-fund --silent)
  fi
fi
# The Node.js peer the benchmarks compare against (npm's `ws`).
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--bench" ]; then
  if [ ! -d bench/peers/node_modules/ws ] || [ bench/peers/package-lock.json -nt bench/peers/node_modules/.package-lock.json ]; then
    say "installing the benchmark peers (npm ci in bench/peers/)"
    (cd bench/peers && npm ci --no-audit --no-fund --silent)
  fi
fi
say "tools ready"
