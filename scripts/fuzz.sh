#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer, nightly, AddressSanitizer) of every parser
# of peer input: the targets in fuzz/fuzz_targets/ (WebSocket frames, HTTP request heads,
# WebSocket client frames, publish bodies, query strings). fuzz/README.md has the details.
#
#   scripts/fuzz.sh smoke [SECONDS]  each target for SECONDS (default 10), one after another,
#                                    from fuzz/seeds/ and fuzz/regressions/ into a scratch
#                                    corpus; exits non-zero on any crash. For the test suite.
#   scripts/fuzz.sh long [SECONDS]   each target for SECONDS (default 600), two at a time,
#                                    growing fuzz/corpus/<target>/; one summary line per
#                                    target on stdout and in fuzz/last-long-run.txt.
#
# Crash inputs land in fuzz/artifacts/<target>/; logs in fuzz/logs/. Installs cargo-fuzz if
# missing. Builds into $CARGO_TARGET_DIR/fuzz (default target/fuzz), apart from the main build.
# FUZZ_FEATURES=strict-buffered turns on the fuzz crate's stricter checks (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

FUZZ="$ROOT/fuzz"
FUZZ_TARGET_DIR="$TARGET_DIR/fuzz"
TARGETS=(ws_frames http_head client_frame publish_body query_strings)
LOGS="$FUZZ/logs"

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

mode=${1:-}
case "$mode" in
  smoke) seconds=${2:-10} ;;
  long) seconds=${2:-600} ;;
  *) usage ;;
esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: SECONDS must be a positive integer" >&2; exit 2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

# Options shared by build and run, so `run` finds the build up to date.
BUILD=(--fuzz-dir "$FUZZ" --target-dir "$FUZZ_TARGET_DIR")
[[ -z "${FUZZ_FEATURES:-}" ]] || BUILD+=(--features "$FUZZ_FEATURES")

# libFuzzer options per target: a dictionary, and inputs long enough to reach every limit
# (MAX_HEAD and MAX_PUBLISH_BYTES are 16 KiB).
target_args() {
  case "$1" in
    ws_frames) echo "-dict=$FUZZ/dicts/ws_frames.dict -max_len=8192" ;;
    http_head) echo "-dict=$FUZZ/dicts/http_head.dict -max_len=17000" ;;
    client_frame | publish_body) echo "-dict=$FUZZ/dicts/publish.dict -max_len=17000" ;;
    query_strings) echo "-dict=$FUZZ/dicts/query_strings.dict -max_len=4096" ;;
  esac
}

# Runs one target for $seconds: fuzz_one TARGET CORPUS_DIR. Writes $LOGS/TARGET.log and
# $LOGS/TARGET.summary (one line); returns non-zero if the target crashed.
fuzz_one() {
  local t=$1 corpus=$2 log="$LOGS/$1.log" start end rc=0
  local inputs=("$corpus" "$FUZZ/seeds/$t")
  [[ -d "$FUZZ/regressions/$t" ]] && inputs+=("$FUZZ/regressions/$t")
  mkdir -p "$corpus" "$FUZZ/artifacts/$t"
  start=$(date +%s)
  # shellcheck disable=SC2046 # target_args is a word list on purpose
  cargo +nightly fuzz run "${BUILD[@]}" "$t" "${inputs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    $(target_args "$t") >"$log" 2>&1 || rc=$?
  end=$(date +%s)
  local execs rate crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # Without final stats (a crash): the last status line's count, and the wall-clock rate.
  [[ -n "$execs" ]] || execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  execs=${execs:-0}
  [[ -n "$rate" ]] || rate=$((execs / (end - start > 0 ? end - start : 1)))
  crashes=$(grep -c 'Test unit written to' "$log" || true)
  if ((rc != 0 && crashes == 0)); then crashes=1; fi # died without an artifact (build error?)
  printf '%-14s execs=%-10s time=%ss exec/s=%-7s crashes=%s\n' \
    "$t" "$execs" "$((end - start))" "$rate" "$crashes" >"$LOGS/$t.summary"
  if ((rc != 0)); then
    {
      echo "---- $t failed (exit $rc); from $log:"
      grep -E -A1 'panicked at' "$log" | head -4 || true
      grep -E 'ERROR: |SUMMARY:|Test unit written to|^error' "$log" | head -10 || true
    } >>"$LOGS/$t.summary"
  fi
  return "$rc"
}

mkdir -p "$LOGS"
echo "fuzz.sh $mode: building the fuzz targets (nightly, into $FUZZ_TARGET_DIR)" >&2
cargo +nightly fuzz build "${BUILD[@]}"

failed=0
case "$mode" in
  smoke)
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/tidings-fuzz-smoke.XXXXXX")
    trap 'rm -rf "$scratch"' EXIT
    for t in "${TARGETS[@]}"; do
      fuzz_one "$t" "$scratch/$t" || failed=1
      cat "$LOGS/$t.summary"
    done
    ;;
  long)
    # Two targets at a time (one per core); each job's result is its summary file.
    running=0
    for t in "${TARGETS[@]}"; do
      if ((running == 2)); then
        wait -n || failed=1
        running=$((running - 1))
      fi
      fuzz_one "$t" "$FUZZ/corpus/$t" &
      running=$((running + 1))
    done
    while ((running > 0)); do
      wait -n || failed=1
      running=$((running - 1))
    done
    {
      echo "# scripts/fuzz.sh long $seconds, $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores"
      for t in "${TARGETS[@]}"; do cat "$LOGS/$t.summary"; done
    } | tee "$FUZZ/last-long-run.txt"
    ;;
esac

if ((failed)); then
  echo "fuzz.sh $mode: CRASH (inputs in fuzz/artifacts/<target>/; reproduce with" \
    "cargo +nightly fuzz run --fuzz-dir fuzz <target> <input>; logs in fuzz/logs/)" >&2
  exit 1
fi
echo "fuzz.sh $mode: no crashes" >&2
