# Sourced by the other scripts: puts the project's own tools first on PATH.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PATH="$ROOT/.tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export TRUNK_SKIP_VERSION_CHECK=true
# Where cargo builds: the workspace's target/ unless the caller chose a shared cache.
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
