#!/usr/bin/env bash
# k8s-tools.sh — build the Kubernetes control plane banger-vk's tests run
# against (kube-apiserver, kube-scheduler, kube-controller-manager, kubectl,
# etcd) from Go modules into a cache directory, never into the repository.
#
# Debian 12 packages no kube-apiserver and there is no download site here;
# the Go module proxy serves k8s.io/kubernetes and every k8s.io/* staging
# module at matching versions. k8s.io/kubernetes' go.mod replaces its staging
# modules with ./staging/... paths, so it cannot be built with 'go install';
# a small wrapper module requires it and re-points each replaced name to the
# published k8s.io/X v0.<minor>.<patch>. etcd builds from its own wrapper.
#
# Idempotent and safe to run concurrently (flock): binaries already built for
# this version are kept. Times go to $OUT/build-times.
#
# Usage: scripts/k8s-tools.sh            (into $BANGER_TEST_CACHE/k8s/$K8S_VERSION)
#        K8S_OUT=/dir scripts/k8s-tools.sh
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE=${BANGER_TEST_CACHE:-/var/cache/banger-test}
OUT=${K8S_OUT:-$CACHE/k8s/$K8S_VERSION}
GO=${GO:-go}
tools=(kube-apiserver kube-scheduler kube-controller-manager kubectl)

if [ "$(id -u)" != 0 ] && [ -z "${BANGER_TEST_CACHE:-}${K8S_OUT:-}" ]; then
  echo "k8s-tools: skipped: not root (the e2e tests that use the control plane need root; set BANGER_TEST_CACHE to build anyway)"
  exit 0
fi
mkdir -p "$OUT/bin" "$OUT/src/kube" "$OUT/src/etcd"
exec 9>"$OUT/.lock"
flock 9

have_all=1
for t in "${tools[@]}" etcd; do
  [ -x "$OUT/bin/$t" ] || have_all=0
done
if [ $have_all = 1 ]; then
  echo "k8s-tools: $K8S_VERSION and etcd $ETCD_VERSION already in $OUT/bin"
  exit 0
fi

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
now() { date +%s; }
note() { echo "$1 $2s" >>"$OUT/build-times"; echo "k8s-tools: $1 in $2s"; }

# The kubernetes wrapper: require k8s.io/kubernetes, re-point its staging
# replaces to the published modules (v1.37.2 -> v0.37.2).
t0=$(now)
cd "$OUT/src/kube"
if [ ! -f go.sum ] || ! grep -q "k8s.io/kubernetes $K8S_VERSION" go.mod 2>/dev/null; then
  staging=v0.${K8S_VERSION#v1.}
  $GO mod download "k8s.io/kubernetes@$K8S_VERSION"
  mod="$($GO env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  {
    echo 'module banger.local/kubetools'; echo; echo 'go 1.26.0'; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo; echo 'replace ('
    sed -n '/^replace/,/^)/p' "$mod" | grep '=>' | awk -v sv="$staging" '{print "\t"$1" => "$1" "sv}'
    echo ')'
  } >go.mod
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for t in "${tools[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$t"; done
    printf ')\n'
  } >tools.go
  $GO mod tidy
fi
note modules-kube $(( $(now) - t0 ))

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
# One go build for all four: the go command then schedules every package
# of all of them at once, keeping both cores busy (built one after another,
# a cold build used about one).
missing=()
for t in "${tools[@]}"; do
  [ -x "$OUT/bin/$t" ] || missing+=("k8s.io/kubernetes/cmd/$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  t0=$(now)
  rm -rf "$OUT/bin/.new" && mkdir -p "$OUT/bin/.new"
  $GO build -trimpath -ldflags "$ldflags" -o "$OUT/bin/.new/" "${missing[@]}"
  mv "$OUT/bin/.new/"* "$OUT/bin/" && rmdir "$OUT/bin/.new"
  note "${tools[*]}" $(( $(now) - t0 ))
fi

if [ ! -x "$OUT/bin/etcd" ]; then
  t0=$(now)
  cd "$OUT/src/etcd"
  if [ ! -f go.sum ]; then
    printf 'module banger.local/etcdtool\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
    $GO mod tidy
  fi
  $GO build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/bin/etcd.tmp" "$OUT/bin/etcd"
  note etcd $(( $(now) - t0 ))
fi
"$OUT/bin/kube-apiserver" --version
"$OUT/bin/etcd" --version | head -1
