#!/usr/bin/env bash
# Make sure a pinned helm binary exists in the dra-bridge cache, building it from its Go module
# when missing. Nothing is written into the repository.
#
# Usage: deploy/hack/ensure-helm.sh
#   env HELM_VERSION       release of helm.sh/helm/v3 (default: pinned below)
#   env DRA_BRIDGE_CACHE   cache root (default: $HOME/.cache/dra-bridge)
#   env BUILD_JOBS         go build -p value (default: 2; the CI machine has 2 cores)
#
# Prints the binary's path as the last line of stdout. Idempotent: when the cached binary reports
# the requested version the script exits at once, without needing Go. While building, a progress
# line goes to stderr every 30 seconds (a first build takes a few minutes on 2 cores).
# Exit codes: 0 ok, 3 Go is not installed (callers may skip), anything else a real failure.
set -euo pipefail

# Pinned for deterministic renders. To bump it: go list -m -versions helm.sh/helm/v3, pick a
# vX.Y.Z whose go.mod "go" line the installed Go satisfies (v3.22.0 needs Go 1.26), and run
# the deploy tests once with HELM_VERSION=<new>.
DEFAULT_HELM_VERSION="v3.22.0"

VERSION="${HELM_VERSION:-$DEFAULT_HELM_VERSION}"
CACHE_ROOT="${DRA_BRIDGE_CACHE:-${HOME:?HOME is not set}/.cache/dra-bridge}"
BIN_DIR="$CACHE_ROOT/helm/$VERSION/bin"
BIN="$BIN_DIR/helm"
JOBS="${BUILD_JOBS:-2}"

log() { printf '[ensure-helm] %s\n' "$*" >&2; }
die() { printf '[ensure-helm] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }

[[ "$VERSION" =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "HELM_VERSION must look like v3.<minor>.<patch> (got '$VERSION')"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "BUILD_JOBS must be a positive integer (got '$JOBS')"

cached_ok() {
  [[ -x "$BIN" ]] || return 1
  local v
  v="$("$BIN" version --template '{{.Version}}' 2>/dev/null)" || return 1
  [[ "$v" == "$VERSION" ]]
}

if cached_ok; then
  printf '%s\n' "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed: cannot build helm $VERSION (install Go, or put a helm $VERSION binary at $BIN)" 3

mkdir -p "$BIN_DIR"
# Two callers at once (parallel test runs) must not both build, nor see a half-copied binary.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN_DIR/.helm.lock"
  if ! flock -n 9; then
    log "another process is building helm $VERSION; waiting for it"
    flock 9
  fi
  if cached_ok; then
    printf '%s\n' "$BIN"
    exit 0
  fi
fi

STAGE="$(mktemp -d "$BIN_DIR/.helm-build.XXXXXX")"
ticker=""
cleanup() { [[ -n "$ticker" ]] && kill "$ticker" 2>/dev/null; rm -rf "$STAGE"; }
trap cleanup EXIT

log "building helm.sh/helm/v3/cmd/helm@$VERSION with $(go version | cut -d' ' -f3) (-p $JOBS); a first build takes a few minutes"
start=$SECONDS
# sleep holds no copy of stdout or stderr: a reader of them sees their end when the script ends
( while sleep 30 >/dev/null 2>&1; do log "still building helm $VERSION ($((SECONDS - start)) s so far)"; done ) &
ticker=$!
# GOTOOLCHAIN=local: build with the installed Go rather than fetching another toolchain. The
# ldflags set what `helm version` reports and the Kubernetes version `helm template` assumes,
# as helm's own Makefile does.
GOBIN="$STAGE" GOTOOLCHAIN=local CGO_ENABLED=0 \
  go install -p "$JOBS" -trimpath \
  -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34" \
  "helm.sh/helm/v3/cmd/helm@$VERSION"
built="$("$STAGE/helm" version --template '{{.Version}}' 2>/dev/null || true)"
[[ "$built" == "$VERSION" ]] || die "built helm reports version '$built', expected '$VERSION'"
mv -f "$STAGE/helm" "$BIN"   # same directory: an atomic rename
log "built helm $VERSION in $((SECONDS - start)) s: $BIN"
printf '%s\n' "$BIN"
