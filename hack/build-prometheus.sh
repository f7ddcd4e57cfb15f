#!/usr/bin/env bash
# Build, or reuse from the cache, the Prometheus server the monitoring e2e test runs:
# `go install github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION`.
# Prometheus v3.x.y is published to the Go module proxy as v0.3xx.y (v3.16.0 = v0.316.0);
# its go.mod has no replace directive, so the go command builds it as is. The web UI's
# assets are not embedded (no `builtinassets` tag): the test only uses the HTTP API.
#
# Needs only Go and the Go module proxy. Logs go to stderr; the last line on stdout is
# the directory holding
#   prometheus  the binary
#   VERSIONS    what was built, with which Go
# e.g. ~/.cache/tfjob-operator/prometheus-v0.316.0-go1.26-linux-amd64-<hash>. The name
# carries the versions and a short hash of the build flags. The directory is filled in a
# temporary sibling and renamed into place once the binary runs; when it already exists
# the script returns at once (no go command beyond `go env`).
#
# Environment:
#   TFJOB_CACHE_DIR            cache root (default: $HOME/.cache/tfjob-operator)
#   PROMETHEUS_MODULE_VERSION  module version (default: v0.316.0, i.e. Prometheus v3.16.0)
set -euo pipefail

log() { printf 'build-prometheus: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"
CACHE_ROOT="${TFJOB_CACHE_DIR:-$HOME/.cache/tfjob-operator}"
MODULE="github.com/prometheus/prometheus"
PKG="$MODULE/cmd/prometheus"

command -v go >/dev/null || die "the go command is not on PATH"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$CACHE_ROOT" 2>/dev/null || { mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT"; }   # outside any module

{ read -r GO_VERSION; read -r GOOS_; read -r GOARCH_; } < <(go env GOVERSION GOOS GOARCH)
GO_MINOR=$(printf '%s\n' "$GO_VERSION" | sed -n 's/^\(go[0-9]*\.[0-9]*\).*/\1/p')
[ -n "$GO_MINOR" ] || die "cannot parse go version '$GO_VERSION'"

# v0.316.0 -> 3.16.0, the version Prometheus reports (common/version).
case "$VERSION" in
v0.3[0-9][0-9].*) minor=${VERSION#v0.3}; patch=${minor#*.}; minor=$((10#${minor%%.*})); REL="3.$minor.$patch" ;;
*) die "PROMETHEUS_MODULE_VERSION '$VERSION' is not a v0.3xx.y (Prometheus v3) module version" ;;
esac
VPKG="github.com/prometheus/common/version"
FLAGS=(-trimpath -ldflags "-s -w -X $VPKG.Version=$REL -X $VPKG.Branch=HEAD -X $VPKG.Revision=go-install")
hash=$(printf '%s\n' "${FLAGS[@]}" "$PKG" | sha256sum | cut -c1-10)
KEY="prometheus-${VERSION}-${GO_MINOR}-${GOOS_}-${GOARCH_}-${hash}"
DIR="$CACHE_ROOT/$KEY"

complete() { [ -x "$DIR/prometheus" ] && [ -f "$DIR/VERSIONS" ]; }

if complete; then
	log "cached: $DIR"
	printf '%s\n' "$DIR"
	exit 0
fi

exec 9>"$CACHE_ROOT/.$KEY.lock"
if command -v flock >/dev/null && ! flock -n 9; then
	log "another build of $KEY is running; waiting for it"
	flock 9
fi
if complete; then
	log "cached (built by the other run): $DIR"
	printf '%s\n' "$DIR"
	exit 0
fi
rm -rf "$CACHE_ROOT/.tmp-$KEY".*
TMP=$(mktemp -d "$CACHE_ROOT/.tmp-$KEY.XXXXXX")
CHILD=
cleanup() {
	if [ -n "$CHILD" ]; then
		kill -TERM -- "-$CHILD" 2>/dev/null || true
		wait "$CHILD" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "building $PKG@$VERSION (Prometheus v$REL) with $GO_VERSION into $DIR"
log "cold (empty Go caches): ~15 min wall on 2 busy shared cores (every service discovery of cmd/prometheus); warm GOCACHE: seconds"
SECONDS=0
setsid env GOBIN="$TMP" nice -n 10 go install "${FLAGS[@]}" "$PKG@$VERSION" 9>&- &
CHILD=$!
wait "$CHILD"
CHILD=
log "go install done after ${SECONDS}s"

out=$("$TMP/prometheus" --version 2>&1 || true)
grep -q "prometheus, version $REL" <<<"$out" || die "prometheus --version did not report $REL: $out"
printf '%s %s (Prometheus v%s)\n%s %s/%s\n' "$MODULE" "$VERSION" "$REL" "$GO_VERSION" "$GOOS_" "$GOARCH_" >"$TMP/VERSIONS"
chmod 0755 "$TMP"
rm -rf "$DIR"
mv -T "$TMP" "$DIR"
trap - EXIT
log "done in ${SECONDS}s: $DIR ($(du -sh "$DIR/prometheus" | cut -f1))"
printf '%s\n' "$DIR"
