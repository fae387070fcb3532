#!/usr/bin/env bash
# Prints deploy/nginx.conf for a given listen port and upstream servers: the one place that
# rewrites it (the cluster tests in server/tests/cluster.rs and end2end/tests/server.ts both
# run the shipped configuration through this).
#
#   deploy/nginx-conf.sh [--file nginx-no-websocket.conf] LISTEN_PORT UPSTREAM_PORT...   > nginx.conf
#
# --file picks another configuration of the same shape in deploy/ (the proxies that break
# things on purpose, for the Auto transport's tests).
set -euo pipefail
file=nginx.conf
if [ "${1:-}" = "--file" ]; then
  file=$2
  shift 2
fi
[ $# -ge 2 ] || { echo "usage: $0 [--file NAME] LISTEN_PORT UPSTREAM_PORT..." >&2; exit 2; }
listen=$1
shift
upstreams=""
for p in "$@"; do
  upstreams+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;\n"
done
conf=$(dirname "$0")/$file
out=$(awk -v listen="$listen" -v ups="$upstreams" '
  /^[ \t]*server 127\.0\.0\.1:300[0-9]/ { if (!done) { printf "%s", ups; done = 1 } next }
  /^[ \t]*listen 127\.0\.0\.1:8080;/ { print "        listen 127.0.0.1:" listen ";"; seen = 1; next }
  { print }
  END { if (!done || !seen) exit 3 }
' "$conf") || { echo "$0: $conf changed shape (no upstream servers or listen line to replace)" >&2; exit 1; }
printf '%s\n' "$out"
