#!/usr/bin/env bash
# Run the whole test suite: lint, types, unit, integration (real libvirtd/QEMU
# and test://) and e2e (sandbox cluster driven with kubectl/helm).
# Installs what it needs first (hack/install-deps.sh). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/install-deps.sh
export PATH="$root/.venv/bin:$PATH"
exec python -m pytest "$@"
