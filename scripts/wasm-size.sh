#!/usr/bin/env bash
# Prints the size of the built browser app (wasm + JS glue, raw and gzip -9) and fails when
# the gzipped total exceeds the budget. The budget is the size measured when it was set
# plus a small margin, so growth is a decision, not an accident.
set -euo pipefail
cd "$(dirname "$0")/.."
# bytes. Raised on 2026-12-02 from 150,000 (measured 146,982) to hold the everyday-use work
# (issue 14: outbox, honest status, chat/news/ticker features, accessibility), which measured
# 171,689, then 177,084 with the review's fixes (ordered sends, request deadlines, merged
# localStorage, rows updated in place): +30 KB, nearly all of it Leptos view code (twiggy:
# app, tachys and reactive_graph monomorphisations; opt-level "s" and wasm-opt --converge were
# tried and are larger or equal). The 150 KiB goal below is now missed; docs/performance.md
# says so and what would win it back. Then 185,000 for the Auto transport (issue 9: proving,
# falling back, probing to climb back): 181,793 measured (+4.7 KB; its first build was +19 KB
# because parsing one f64 from localStorage pulled in the float parser's tables: keep floats
# out of parsing here). Then 190,000 for one connection per browser (issue 9: the tab
# election and the relay between tabs, which serialises events the app used to only read):
# 189,487 measured (+7.5 KB; +18 KB with an internally tagged serde enum: avoid those here).
# Then 192,000 for the review's fixes to Auto (a WebSocket must deliver a hello; a watchdog
# closes a silent one): 190,602 measured. Then 193,000 for the ticker's sparklines and the
# lab stream's payload type: 191,949 measured. Then 194,000 for the first paint in one round
# trip (the snapshot taken from index.html's early request: +0.6 KB), news and chat rows keyed
# by id and time (a wiped store left old rows under reused ids: +0.5 KB) and the wire types in
# a crate of their own (+0.5 KB: the crate boundary changes inlining under LTO), less 0.4 KB
# won back in the store's history load: 193,073 measured. Then 217,000 for accounts and
# notifications (issue 10: sign-in form, bell, notification panel with read state synced
# across tabs, desktop alerts): 215,260 measured, +21 KB, ~12 KB of it the two panels'
# Leptos view code (tried: inputs read on submit instead of a signal per field, -50 B;
# Either instead of type-erased AnyView views, which had cost 4 KB more). Leptos' lazy
# routes (wasm splitting) would move the panels out of the first download; trunk does not
# split wasm today. (215,916 with the session-hint cookie check.) Then 226,000 for price
# alerts in the panel (their list and form), the verified-author mark and the security
# review's fixes: 224,756 measured (+8.8 KB). Then 234,000 for presence (the online list in
# the chat panel, the presence event and list types, a list applied over events that came
# first and asked again after a burst or a failure): 232,898 measured, +7.1 KB against
# 225,792 built the same day, most of it serde's code for the two new types (the lab, which
# shares the event decoder, grew 4.1 KB too).
BUDGET_GZIP=${TIDINGS_WASM_BUDGET:-234000}
GOAL_GZIP=153600                              # 150 KiB: the product goal (docs/performance.md)
wasm=$(ls app/dist/*_bg.wasm)
js=$(ls app/dist/app-*.js)
raw_wasm=$(stat -c %s "$wasm"); raw_js=$(stat -c %s "$js")
gz_wasm=$(gzip -9 -c "$wasm" | wc -c); gz_js=$(gzip -9 -c "$js" | wc -c)
total=$((gz_wasm + gz_js))
printf 'app size: wasm %d B raw / %d B gzip; js %d B raw / %d B gzip; total gzip %d B (%.1f KiB), budget %d B\n' \
  "$raw_wasm" "$gz_wasm" "$raw_js" "$gz_js" "$total" "$(awk "BEGIN {print $total/1024}")" "$BUDGET_GZIP"
# The lab is its own bundle (only /lab/ loads it): reported, with a budget of its own.
LAB_BUDGET_GZIP=${TIDINGS_LAB_BUDGET:-200000}
if lab_wasm=$(ls app/dist/lab/*_bg.wasm 2>/dev/null) && lab_js=$(ls app/dist/lab/lab-*.js 2>/dev/null); then
  lab_total=$(( $(gzip -9 -c "$lab_wasm" | wc -c) + $(gzip -9 -c "$lab_js" | wc -c) ))
  printf 'lab size: total gzip %d B (%.1f KiB), budget %d B\n' "$lab_total" "$(awk "BEGIN {print $lab_total/1024}")" "$LAB_BUDGET_GZIP"
  if [ "$lab_total" -gt "$LAB_BUDGET_GZIP" ]; then
    echo "lab size: over budget by $((lab_total - LAB_BUDGET_GZIP)) bytes" >&2
    exit 1
  fi
fi
if [ "$total" -gt "$GOAL_GZIP" ]; then
  echo "app size: WARNING: above the 150 KiB goal by $((total - GOAL_GZIP)) bytes" >&2
fi
if [ "$total" -gt "$BUDGET_GZIP" ]; then
  echo "app size: over budget by $((total - BUDGET_GZIP)) bytes" >&2
  exit 1
fi
