#!/usr/bin/env bash
# The front-end dev loop in one command: the API server (debug build) and `trunk serve`,
# which rebuilds the app on save and proxies /api (and the WebSocket) to the server.
# Ctrl-C stops both.
#
#   scripts/dev.sh                         # app on http://127.0.0.1:8080, API on :3000
#   scripts/dev.sh --port 8081 --api-port 3001 -- --no-demo   # after --: server flags
#   scripts/dev.sh --trunk-only --api-port 3000   # the API runs elsewhere (your own server)
#
# The page is served by trunk on its own origin (http://127.0.0.1:8080), and trunk's
# WebSocket proxy forwards the browser's Origin header, so the server must be told that
# origin is allowed (--allow-origin): this script passes it. The server's Origin check is
# not weakened for anyone else. With --trunk-only, start your server with
# `--allow-origin http://127.0.0.1:<port>` yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
port=8080
api_port=3000
trunk_only=false
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --api-port) api_port=$2; shift 2 ;;
    --trunk-only) trunk_only=true; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dev.sh: unknown option $1 (server flags go after --)" >&2; exit 2 ;;
  esac
done
scripts/setup.sh >/dev/null
. scripts/env.sh

# trunk's proxy targets come from its config: a copy of app/Trunk.toml with these ports
# (app/Trunk.dev.toml, not committed; paths in it are relative to app/).
# Its own output directory (app/dist-dev), so the dev build never replaces the release
# build in app/dist that `scripts/run.sh` serves.
sed -e "s#127\.0\.0\.1:3000#127.0.0.1:${api_port}#g" -e "s#^port = 8080#port = ${port}#" \
  -e 's#^dist = "dist"#dist = "dist-dev"#' app/Trunk.toml > app/Trunk.dev.toml
grep -q "127.0.0.1:${api_port}/api/ws" app/Trunk.dev.toml && grep -q "^port = ${port}" app/Trunk.dev.toml \
  && grep -q '^dist = "dist-dev"' app/Trunk.dev.toml \
  || { echo "dev.sh: app/Trunk.toml changed shape (proxy or port lines not found)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! $trunk_only; then
  cargo build -p server
  "$TARGET_DIR/debug/tidings" --bind "127.0.0.1:${api_port}" --static-dir /nonexistent \
    --data-dir data-dev --allow-origin "http://127.0.0.1:${port}" \
    --allow-origin "http://localhost:${port}" "$@" &
  pids+=($!)
fi
(cd app && exec trunk serve --config Trunk.dev.toml) &
pids+=($!)
echo "dev: app on http://127.0.0.1:${port} (rebuilds on save), API on http://127.0.0.1:${api_port}; Ctrl-C stops both"
# Either one ending ends the loop (and the trap stops the other).
wait -n
