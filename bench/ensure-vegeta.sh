#!/usr/bin/env bash
# Make sure a pinned vegeta (the HTTP load generator of the benchmark) exists in the dra-bridge cache,
# building it from its Go module when missing. Nothing is written into the repository.
#
# Usage: bench/ensure-vegeta.sh
#   env VEGETA_VERSION    release of github.com/tsenart/vegeta/v12 (default: pinned below)
#   env DRA_BRIDGE_CACHE  cache root (default: $HOME/.cache/dra-bridge)
#   env BUILD_JOBS        go build -p value (default: 2; the CI machine has 2 cores)
#
# Prints the binary's path as the last line of stdout. Idempotent: when the cached binary reports
# the requested version the script exits at once, without needing Go.
# Exit codes: 0 ok, 3 Go is not installed (callers may skip), anything else a real failure.
set -euo pipefail

# Pinned so that figures from different runs come from the same load generator. v12.12.0's go.mod
# asks for Go 1.22. To bump: pick a plain v12.x.y tag, run `bench/run.py --quick` once with
# VEGETA_VERSION=<new>.
DEFAULT_VEGETA_VERSION="v12.12.0"

VERSION="${VEGETA_VERSION:-$DEFAULT_VEGETA_VERSION}"
CACHE_ROOT="${DRA_BRIDGE_CACHE:-${HOME:?HOME is not set}/.cache/dra-bridge}"
BIN_DIR="$CACHE_ROOT/bin"
BIN="$BIN_DIR/vegeta-$VERSION"   # versioned name: a bump never runs a stale binary
JOBS="${BUILD_JOBS:-2}"

log() { printf '[ensure-vegeta] %s\n' "$*" >&2; }
die() { printf '[ensure-vegeta] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }

[[ "$VERSION" =~ ^v12\.[0-9]+\.[0-9]+$ ]] || die "VEGETA_VERSION must look like v12.<minor>.<patch> (got '$VERSION')"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "BUILD_JOBS must be a positive integer (got '$JOBS')"

cached_ok() {
  [[ -x "$BIN" ]] || return 1
  [[ "$("$BIN" -version 2>/dev/null | sed -n 's/^Version: //p')" == "$VERSION" ]]
}

if cached_ok; then
  printf '%s\n' "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed: cannot build vegeta $VERSION (install Go, or put a vegeta $VERSION binary at $BIN)" 3

mkdir -p "$BIN_DIR"
# Two callers at once (a test run and a benchmark) must not both build, nor see a half-copied binary.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN_DIR/.vegeta.lock"
  flock 9
  if cached_ok; then
    printf '%s\n' "$BIN"
    exit 0
  fi
fi

STAGE="$(mktemp -d "$BIN_DIR/.vegeta-build.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

log "building github.com/tsenart/vegeta/v12@$VERSION with $(go version | cut -d' ' -f3) (-p $JOBS)"
start=$SECONDS
# Not `go install pkg@version`: it looks up the module's deprecation in the proxy's version list,
# which this proxy refuses (403), and fails. A throwaway module that requires the exact version
# resolves the same dependency versions (vegeta's own go.mod) without that lookup.
(
  cd "$STAGE"
  go mod init vegeta-build >/dev/null 2>&1
  go mod edit -go=1.22 -require="github.com/tsenart/vegeta/v12@$VERSION"
  # GOTOOLCHAIN=local: build with the installed Go rather than fetching another toolchain.
  # -X main.Version: a module build sets no version, so stamp the one the cache check reads.
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
    go build -p "$JOBS" -trimpath -ldflags="-s -w -X main.Version=$VERSION" -o vegeta "github.com/tsenart/vegeta/v12"
)
cached_version() { "$STAGE/vegeta" -version 2>/dev/null | sed -n 's/^Version: //p'; }
built="$(cached_version || true)"
[[ "$built" == "$VERSION" ]] || die "built vegeta reports version '$built', expected '$VERSION'"
mv -f "$STAGE/vegeta" "$BIN"   # same directory: an atomic rename
log "built vegeta $VERSION in $((SECONDS - start)) s: $BIN"
printf '%s\n' "$BIN"
