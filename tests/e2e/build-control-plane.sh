#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and etcd) from published Go modules, for the e2e tests.
#
# Usage: tests/e2e/build-control-plane.sh
#   env K8S_VERSION       Kubernetes release to build (default: pinned below)
#   env DRA_BRIDGE_CACHE  cache root (default: $HOME/.cache/dra-bridge)
#   env BUILD_JOBS        go build -p value (default: 2)
#
# Binaries land in $DRA_BRIDGE_CACHE/k8s/$K8S_VERSION/bin; that directory is
# printed as the last line of stdout.  Nothing is written into the repository.
# Idempotent: when all binaries exist and `kube-apiserver --version` reports the
# requested version, the script exits at once.
#
# Needs only `go` (>= the go directive of the chosen k8s.io/kubernetes go.mod)
# and access to the Go module proxy.
set -euo pipefail

# Pinned default, for deterministic builds.  To bump it, list the releases the
# proxy serves and pick the newest plain vX.Y.Z (no -alpha/-beta/-rc):
#   go list -m -versions k8s.io/kubernetes | tr ' ' '\n' | grep -E '^v1\.[0-9]+\.[0-9]+$' | sort -V | tail -1
# then run this script with K8S_VERSION=<new> once to check that it builds.
DEFAULT_K8S_VERSION="v1.36.3"

VERSION="${K8S_VERSION:-$DEFAULT_K8S_VERSION}"
CACHE_ROOT="${DRA_BRIDGE_CACHE:-${HOME:?HOME is not set}/.cache/dra-bridge}"
OUT="$CACHE_ROOT/k8s/$VERSION"
BIN="$OUT/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

log() { printf '[build-control-plane] %s\n' "$*" >&2; }
die() { printf '[build-control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ! "$VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
  die "K8S_VERSION must look like v1.<minor>.<patch> (got '$VERSION')"
fi
MAJOR=1
MINOR="${BASH_REMATCH[1]}"
PATCH="${BASH_REMATCH[2]}"
STAGING_VERSION="v0.${MINOR}.${PATCH}"

# ---------------------------------------------------------------- fast path --
cached_ok() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || return 1
  done
  local v
  v="$("$BIN/kube-apiserver" --version 2>/dev/null)" || return 1
  [[ "$v" == "Kubernetes $VERSION" ]]
}

if cached_ok; then
  log "cached: $BIN ($("$BIN/kube-apiserver" --version))"
  echo "$BIN"
  exit 0
fi

# ------------------------------------------------------------ prerequisites --
command -v go >/dev/null 2>&1 || die "go not found in PATH (install Go >= 1.26 and retry)"
log "using $(go version)"

mkdir -p "$BIN" "$OUT/build"

# Serialise concurrent runs (e.g. parallel test sessions) on the same version.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.lock"
  flock 9
  if cached_ok; then
    log "built meanwhile by another run: $BIN"
    echo "$BIN"
    exit 0
  fi
fi
BUILD_K8S="$OUT/build/kubernetes"
BUILD_ETCD="$OUT/build/etcd"
mkdir -p "$BUILD_K8S" "$BUILD_ETCD"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -p=${BUILD_JOBS:-2}"
# Never pick up a go.work from somewhere above the cache directory.
export GOWORK=off

TOTAL_START=$SECONDS

# ---------------------------------------------- kubernetes go.mod, metadata --
log "resolving k8s.io/kubernetes@$VERSION"
json_field() { # json_field KEY  (reads the flat JSON object on stdin)
  sed -n "s/^[[:space:]]*\"$1\":[[:space:]]*\"\(.*\)\",\{0,1\}[[:space:]]*$/\1/p" | head -n1
}
if ! dl_json="$(go mod download -json "k8s.io/kubernetes@$VERSION")"; then
  die "cannot download k8s.io/kubernetes@$VERSION from the module proxy: $(printf '%s\n' "$dl_json" | json_field Error)"
fi
K8S_GOMOD="$(printf '%s\n' "$dl_json" | json_field GoMod)"
K8S_INFO="$(printf '%s\n' "$dl_json" | json_field Info)"
[[ -f "$K8S_GOMOD" ]] || die "go mod download did not report a go.mod for k8s.io/kubernetes@$VERSION"

# Release time of the module: used as buildDate so rebuilds are reproducible.
BUILD_DATE="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$K8S_INFO" 2>/dev/null || true)"
[[ -n "$BUILD_DATE" ]] || BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

GO_DIRECTIVE="$(awk '$1 == "go" { print $2; exit }' "$K8S_GOMOD")"
[[ -n "$GO_DIRECTIVE" ]] || die "no go directive in $K8S_GOMOD"
GODEBUG_LINES="$(grep -E '^godebug[[:space:]]' "$K8S_GOMOD" || true)"

# Staging modules: every `k8s.io/<x> => ./staging/...` replacement of the
# kubernetes go.mod (single-line or inside a replace block).
mapfile -t STAGING < <(
  sed -E 's/^[[:space:]]*replace[[:space:]]+//' "$K8S_GOMOD" \
    | awk '$2 == "=>" && $3 ~ /^\.\/staging\// && $1 ~ /^k8s\.io\// { print $1 }' \
    | sort -u
)
(( ${#STAGING[@]} > 0 )) || die "found no ./staging replace directives in $K8S_GOMOD"
log "${#STAGING[@]} staging modules pinned to $STAGING_VERSION"

# etcd: the go.etcd.io/etcd/server/v3 version this Kubernetes release requires.
ETCD_VERSION="${ETCD_VERSION:-$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$K8S_GOMOD")}"
[[ -n "$ETCD_VERSION" ]] || die "k8s.io/kubernetes@$VERSION go.mod does not require go.etcd.io/etcd/server/v3; set ETCD_VERSION"
log "etcd version (from kubernetes go.mod): $ETCD_VERSION"

# ----------------------------------------------------- generate build modules --
{
  echo "// Generated by tests/e2e/build-control-plane.sh - do not edit."
  echo "module dra-bridge.invalid/k8s-build"
  echo
  echo "go $GO_DIRECTIVE"
  [[ -n "$GODEBUG_LINES" ]] && { echo; echo "$GODEBUG_LINES"; }
  echo
  echo "require k8s.io/kubernetes $VERSION"
  echo
  echo "replace ("
  for m in "${STAGING[@]}"; do
    echo "	$m => $m $STAGING_VERSION"
  done
  echo ")"
} > "$BUILD_K8S/go.mod.new"
# Keep go.sum (and skip re-resolving) when the generated go.mod is unchanged.
if ! cmp -s "$BUILD_K8S/go.mod.new" "$BUILD_K8S/go.mod.gen" 2>/dev/null; then
  rm -f "$BUILD_K8S/go.sum"
  cp "$BUILD_K8S/go.mod.new" "$BUILD_K8S/go.mod"
  cp "$BUILD_K8S/go.mod.new" "$BUILD_K8S/go.mod.gen"
fi
rm -f "$BUILD_K8S/go.mod.new"

cat > "$BUILD_ETCD/go.mod" <<EOF
// Generated by tests/e2e/build-control-plane.sh - do not edit.
module dra-bridge.invalid/etcd-build

go $GO_DIRECTIVE

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF

K8S_PKGS=(
  "k8s.io/kubernetes/cmd/kube-apiserver"
  "k8s.io/kubernetes/cmd/kube-controller-manager"
  "k8s.io/kubernetes/cmd/kube-scheduler"
  "k8s.io/kubernetes/cmd/kubectl"
)

log "resolving dependencies of the kubernetes commands"
t0=$SECONDS
get_args=()
for p in "${K8S_PKGS[@]}"; do get_args+=("$p@$VERSION"); done
(cd "$BUILD_K8S" && go get "${get_args[@]}") >&2 \
  || die "go get failed for k8s.io/kubernetes@$VERSION (are all staging modules published as $STAGING_VERSION?)"
log "kubernetes dependencies resolved in $((SECONDS - t0))s"

t0=$SECONDS
(cd "$BUILD_ETCD" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION") >&2 \
  || die "go get failed for go.etcd.io/etcd/server/v3@$ETCD_VERSION"
log "etcd dependencies resolved in $((SECONDS - t0))s"

# ------------------------------------------------------------------- build --
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$VERSION"
  LDFLAGS+=" -X $pkg.gitMajor=$MAJOR"
  LDFLAGS+=" -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitTreeState=clean"
  LDFLAGS+=" -X $pkg.buildDate=$BUILD_DATE"
done
TAGS="selinux,notest,grpcnotrace"   # the tags hack/lib/golang.sh uses for release builds

build_one() { # build_one NAME MODULE_DIR PACKAGE LDFLAGS
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  local tmp="$BIN/.$name.tmp.$$"
  if [[ -x "$BIN/$name" && -f "$BIN/.$name.stamp" ]] \
     && [[ "$(cat "$BIN/.$name.stamp")" == "$pkg $VERSION $ldflags" ]]; then
    log "$name: already built, skipping"
    return 0
  fi
  log "$name: building $pkg"
  local t0=$SECONDS
  rm -f "$tmp"
  # Sequential builds, -p=${BUILD_JOBS:-2} from GOFLAGS, to keep memory use sane.
  if ! (cd "$dir" && go build -trimpath -buildvcs=false -tags="$TAGS" -ldflags "$ldflags" -o "$tmp" "$pkg") >&2; then
    rm -f "$tmp"
    die "building $name ($pkg) failed"
  fi
  mv -f "$tmp" "$BIN/$name"
  printf '%s\n' "$pkg $VERSION $ldflags" > "$BIN/.$name.stamp"
  log "$name: built in $((SECONDS - t0))s ($(du -h "$BIN/$name" | cut -f1))"
}

trap 'rm -f "$BIN"/.*.tmp.$$' EXIT

for p in "${K8S_PKGS[@]}"; do
  build_one "$(basename "$p")" "$BUILD_K8S" "$p" "$LDFLAGS"
done
build_one etcd "$BUILD_ETCD" "go.etcd.io/etcd/server/v3" "-s -w"

cached_ok || die "build finished but '$BIN/kube-apiserver --version' does not report Kubernetes $VERSION"
log "all binaries ready in $((SECONDS - TOTAL_START))s: $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -n1)"
echo "$BIN"
