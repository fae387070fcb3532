#!/usr/bin/env bash
# Runs Tidings: installs missing tools, builds the browser app (release) and the server
# (release), then serves everything on http://127.0.0.1:3000 with the embedded SQLite
# store under ./data and the demo newsroom and ticker on. Extra arguments go to the
# server (see `--help`), e.g. `scripts/run.sh --bind 0.0.0.0:8000 --no-demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/build-app.sh
cargo build --release -p server
exec "$TARGET_DIR/release/tidings" --static-dir app/dist "$@"
