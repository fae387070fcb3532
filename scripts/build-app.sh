#!/usr/bin/env bash
# Builds the browser app's two bundles (release): the app itself into app/dist/ and the
# transport lab into app/dist/lab/ (served at /lab/). In this order: trunk replaces its whole
# dist directory when it builds, so the lab goes in after the app.
set -euo pipefail
cd "$(dirname "$0")/../app"
trunk build --release
trunk build lab.html --release=true --dist dist/lab --public-url /lab/
