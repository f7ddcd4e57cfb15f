#!/usr/bin/env bash
# Build, or reuse from the cache, the Helm client the chart tests run:
# `go install helm.sh/helm/v4/cmd/helm@$HELM_VERSION` (Helm's go.mod has no replace
# directive, so the go command builds it as is).
#
# Needs only Go and the Go module proxy. Logs go to stderr; the last line on stdout is
# the directory holding
#   helm      the binary, stamped with its version (`helm version` prints it)
#   VERSIONS  what was built, with which Go
# e.g. ~/.cache/tfjob-operator/helm-v4.3.2-go1.26-linux-amd64-<hash>. The name carries
# the versions and a short hash of the build flags. The directory is filled in a
# temporary sibling and renamed into place once the binary runs; when it already exists
# the script returns at once (no build).
#
# Environment:
#   TFJOB_CACHE_DIR  cache root (default: $HOME/.cache/tfjob-operator)
#   HELM_VERSION     Helm release (default: v4.3.2)
set -euo pipefail

log() { printf 'build-helm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE_ROOT="${TFJOB_CACHE_DIR:-$HOME/.cache/tfjob-operator}"
MODULE="helm.sh/helm/v4"

command -v go >/dev/null || die "the go command is not on PATH"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$CACHE_ROOT" 2>/dev/null || { mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT"; }   # outside any module

{ read -r GO_VERSION; read -r GOOS_; read -r GOARCH_; } < <(go env GOVERSION GOOS GOARCH)
GO_MINOR=$(printf '%s\n' "$GO_VERSION" | sed -n 's/^\(go[0-9]*\.[0-9]*\).*/\1/p')
[ -n "$GO_MINOR" ] || die "cannot parse go version '$GO_VERSION'"

# The version variable upstream's Makefile sets for a tagged build (internal/version), so
# `helm version` reports the release and not its default "v4.3".
FLAGS=(-trimpath -ldflags "-s -w -X $MODULE/internal/version.version=$HELM_VERSION")
hash=$(printf '%s\n' "${FLAGS[@]}" | sha256sum | cut -c1-10)
KEY="helm-${HELM_VERSION}-${GO_MINOR}-${GOOS_}-${GOARCH_}-${hash}"
DIR="$CACHE_ROOT/$KEY"

complete() { [ -x "$DIR/helm" ] && [ -f "$DIR/VERSIONS" ]; }

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

log "building $MODULE@$HELM_VERSION with $GO_VERSION into $DIR"
log "cold (client-go and the rest not in GOCACHE): 405 s wall on 2 busy shared cores, a 64 MB binary; warm GOCACHE: seconds"
SECONDS=0
setsid env GOBIN="$TMP" nice -n 10 go install "${FLAGS[@]}" "$MODULE/cmd/helm@$HELM_VERSION" 9>&- &
CHILD=$!
wait "$CHILD"
CHILD=
log "go install done after ${SECONDS}s"

out=$("$TMP/helm" version --template '{{.Version}}' 2>&1 || true)
[ "$out" = "$HELM_VERSION" ] || die "helm version printed '$out', not $HELM_VERSION"
printf '%s %s\n%s %s/%s\n' "$MODULE" "$HELM_VERSION" "$GO_VERSION" "$GOOS_" "$GOARCH_" >"$TMP/VERSIONS"
chmod 0755 "$TMP"
rm -rf "$DIR"
mv -T "$TMP" "$DIR"
trap - EXIT
log "done in ${SECONDS}s: $DIR ($(du -sh "$DIR/helm" | cut -f1))"
printf '%s\n' "$DIR"
