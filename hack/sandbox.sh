#!/usr/bin/env bash
# Install prerequisites, then run `failovervm sandbox ARGS` (default: up).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/install-deps.sh
export PATH="$root/.venv/bin:$PATH"
[ $# -gt 0 ] || set -- up
exec failovervm sandbox "$@"
