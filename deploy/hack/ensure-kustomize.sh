#!/usr/bin/env bash
# Make sure a pinned kustomize binary exists in the dra-bridge cache, building it from its Go module
# when missing. Nothing is written into the repository.
#
# Usage: deploy/hack/ensure-kustomize.sh
#   env KUSTOMIZE_VERSION  release of sigs.k8s.io/kustomize/kustomize/v5 (default: pinned below)
#   env DRA_BRIDGE_CACHE   cache root (default: $HOME/.cache/dra-bridge)
#   env BUILD_JOBS         go build -p value (default: 2; the CI machine has 2 cores)
#
# Prints the binary's path as the last line of stdout. Idempotent: when the cached binary reports
# the requested version the script exits at once, without needing Go.
# Exit codes: 0 ok, 3 Go is not installed (callers may skip), anything else a real failure.
set -euo pipefail

# Pinned for deterministic renders. To bump it, list the releases the Go module proxy serves:
#   go list -m -versions sigs.k8s.io/kustomize/kustomize/v5
# pick the newest plain vX.Y.Z whose go.mod "go" line the installed Go satisfies (v5.8.2 needs
# Go 1.26, v5.8.3 Go 1.27; v5.8.1 builds with Go 1.24+), and run the deploy tests once with
# KUSTOMIZE_VERSION=<new>.
DEFAULT_KUSTOMIZE_VERSION="v5.8.1"

VERSION="${KUSTOMIZE_VERSION:-$DEFAULT_KUSTOMIZE_VERSION}"
CACHE_ROOT="${DRA_BRIDGE_CACHE:-${HOME:?HOME is not set}/.cache/dra-bridge}"
BIN_DIR="$CACHE_ROOT/bin"
BIN="$BIN_DIR/kustomize"
JOBS="${BUILD_JOBS:-2}"

log() { printf '[ensure-kustomize] %s\n' "$*" >&2; }
die() { printf '[ensure-kustomize] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }

[[ "$VERSION" =~ ^v5\.[0-9]+\.[0-9]+$ ]] || die "KUSTOMIZE_VERSION must look like v5.<minor>.<patch> (got '$VERSION')"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "BUILD_JOBS must be a positive integer (got '$JOBS')"

cached_ok() {
  [[ -x "$BIN" ]] || return 1
  local v
  v="$("$BIN" version 2>/dev/null)" || return 1
  [[ "$v" == "$VERSION" ]]
}

if cached_ok; then
  printf '%s\n' "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed: cannot build kustomize $VERSION (install Go, or put a kustomize $VERSION binary at $BIN)" 3

mkdir -p "$BIN_DIR"
# Two callers at once (parallel test runs) must not both build, nor see a half-copied binary.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN_DIR/.kustomize.lock"
  flock 9
  if cached_ok; then
    printf '%s\n' "$BIN"
    exit 0
  fi
fi

STAGE="$(mktemp -d "$BIN_DIR/.kustomize-build.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

log "building sigs.k8s.io/kustomize/kustomize/v5@$VERSION with $(go version | cut -d' ' -f3) (-p $JOBS)"
start=$SECONDS
# GOTOOLCHAIN=local: build with the installed Go rather than fetching another toolchain.
GOBIN="$STAGE" GOTOOLCHAIN=local CGO_ENABLED=0 \
  go install -p "$JOBS" -trimpath -ldflags='-s -w' "sigs.k8s.io/kustomize/kustomize/v5@$VERSION"
built="$("$STAGE/kustomize" version 2>/dev/null || true)"
[[ "$built" == "$VERSION" ]] || die "built kustomize reports version '$built', expected '$VERSION'"
mv -f "$STAGE/kustomize" "$BIN"   # same directory: an atomic rename
log "built kustomize $VERSION in $((SECONDS - start)) s: $BIN"
printf '%s\n' "$BIN"
