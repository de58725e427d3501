#!/usr/bin/env bash
# The protocol crate is sans-IO: it must not depend on tokio or tungstenite.
set -euo pipefail
cd "$(dirname "$0")/.."
if cargo tree -p toolwire-protocol -e normal,build --locked --prefix none | grep -E '^(tokio|tokio-[a-z-]+|tungstenite|tokio-tungstenite) ' ; then
  echo "check-deps: toolwire-protocol must not depend on tokio or tungstenite" >&2
  exit 1
fi
echo "check-deps: toolwire-protocol has no tokio/tungstenite dependency"
