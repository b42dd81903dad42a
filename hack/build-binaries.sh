#!/usr/bin/env bash
# Build the pinned control-plane binaries from upstream Go modules.
#
#   hack/build-binaries.sh [etcd|kube-apiserver|kube-controller-manager|kube-scheduler|helm ...]
#
# Binaries are cached outside the repository, keyed by version, in
#   ${FAILOVERVM_CACHE:-$HOME/.cache/failovervm}/bin/<name>-<version>
# so each machine builds them once. Go's own module and build caches
# (~/go/pkg/mod, ~/.cache/go-build) also survive between runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${FAILOVERVM_CACHE:-$HOME/.cache/failovervm}/bin
mkdir -p "$cache"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
# Two cores: let the compiler use both, but do not let the linker of one build
# overlap with another by running builds one after the other.
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(etcd kube-apiserver kube-controller-manager kube-scheduler helm)

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

k8s_ldflags() {
  local v=$KUBERNETES_VERSION minor
  minor=$(echo "$v" | cut -d. -f2)
  local f="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

build() {
  local name=$1 version out
  case $name in
    etcd) version=$ETCD_VERSION ;;
    kube-apiserver|kube-controller-manager|kube-scheduler) version=$KUBERNETES_VERSION ;;
    helm) version=$HELM_VERSION ;;
    *) echo "unknown binary: $name" >&2; exit 2 ;;
  esac
  out="$cache/$name-$version"
  if [ -x "$out" ]; then
    log "$name $version: cached at $out"
    return
  fi
  log "$name $version: building (the first build takes several minutes) ..."
  local start=$SECONDS tmp="$out.tmp.$$"
  case $name in
    etcd)
      (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp" .) ;;
    kube-apiserver|kube-controller-manager|kube-scheduler)
      (cd "$here/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp" "k8s.io/kubernetes/cmd/$name") ;;
    helm)
      local gobin
      gobin=$(mktemp -d)
      GOBIN=$gobin go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
      mv "$gobin/helm" "$tmp"; rmdir "$gobin" ;;
  esac
  mv "$tmp" "$out"
  log "$name $version: built in $((SECONDS - start))s -> $out"
}

for t in "${targets[@]}"; do build "$t"; done
