#!/usr/bin/env bash
# Build, or reuse from the cache, the control-plane binaries the e2e tests run:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd
#     from the wrapper module testbin/ (k8s.io/kubernetes and etcd at the
#     versions pinned in testbin/go.mod; regenerate it with
#     hack/gen-testbin-gomod.sh)
#   kwok
#     `go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION`, outside testbin/ so
#     kwok keeps its own dependency versions.
#
# Needs only Go and the Go module proxy. Logs go to stderr; the last line on
# stdout is the directory holding the binaries, e.g.
#   ~/.cache/tfjob-operator/k8s-v1.36.3-etcd-v3.6.8-kwok-v0.8.0-go1.26-linux-amd64-<hash>
# The directory name carries every version that goes into the binaries plus a
# short hash of the build inputs (testbin/go.mod, go.sum, the mains and the
# flags below), so any change gets a fresh directory and an unchanged tree
# reuses it. It is filled in a temporary sibling and renamed into place only
# when every binary has been built and has printed its version: an interrupted
# build never leaves a half-filled cache. When the directory already exists the
# script returns in well under a second without running the go command's build.
#
# Environment:
#   TFJOB_CACHE_DIR  cache root (default: $HOME/.cache/tfjob-operator)
#   KWOK_VERSION     kwok release (default: v0.8.0)
# The Go build and module caches are Go's usual ones (GOCACHE, GOMODCACHE).
set -euo pipefail

log() { printf 'build-control-plane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBIN="$ROOT/testbin"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE_ROOT="${TFJOB_CACHE_DIR:-$HOME/.cache/tfjob-operator}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

command -v go >/dev/null || die "the go command is not on PATH"
export GOWORK=off CGO_ENABLED=0

# --- versions and cache key (no network, no build) ---------------------------
# Read straight from go.mod, which hack/gen-testbin-gomod.sh writes.
gomod_version() { awk -v m="$1" '$1 == "require" { $1 = ""; $0 = substr($0, 2) } $1 == m && $2 ~ /^v/ { print $2; exit }' "$TESTBIN/go.mod"; }
K8S_VERSION=$(gomod_version k8s.io/kubernetes)
ETCD_VERSION=$(gomod_version go.etcd.io/etcd/server/v3)
[[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "no k8s.io/kubernetes v1.X.Y requirement in $TESTBIN/go.mod"
K8S_MINOR="${BASH_REMATCH[1]}"
[ -n "$ETCD_VERSION" ] || die "no go.etcd.io/etcd/server/v3 requirement in $TESTBIN/go.mod"

# Run `go env` inside testbin/ so it reports the toolchain that will build it.
{ read -r GO_VERSION; read -r GOOS_; read -r GOARCH_; } < <(cd "$TESTBIN" && go env GOVERSION GOOS GOARCH)
GO_MINOR=$(printf '%s\n' "$GO_VERSION" | sed -n 's/^\(go[0-9]*\.[0-9]*\).*/\1/p')
[ -n "$GO_MINOR" ] || die "cannot parse go version '$GO_VERSION'"

# The version variables upstream's hack/lib/version.sh sets, for the server
# components (component-base) and for kubectl (client-go). gitCommit stays
# empty: the module proxy does not say which commit a tag is.
version_ldflags() {
	local pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		printf -- ' -X %s=%s' \
			"$pkg.gitVersion" "$K8S_VERSION" \
			"$pkg.gitMajor" 1 \
			"$pkg.gitMinor" "$K8S_MINOR" \
			"$pkg.gitCommit" "" \
			"$pkg.gitTreeState" clean \
			"$pkg.buildDate" "$1"
	done
}
BUILD_FLAGS="-trimpath -ldflags=-s -w$(version_ldflags BUILD_DATE)"   # for the key only
KWOK_FLAGS=(-trimpath -ldflags "-s -w")

inputs_hash=$(
	cd "$TESTBIN"
	{
		printf '%s\n' "$BUILD_FLAGS" "${KWOK_FLAGS[*]}" "${BINARIES[*]}"
		for f in go.mod go.sum $(find cmd -name '*.go' | LC_ALL=C sort); do
			printf '== %s\n' "$f"; cat "$f"
		done
	} | sha256sum | cut -c1-10
)
KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-${GO_MINOR}-${GOOS_}-${GOARCH_}-${inputs_hash}"
BIN_DIR="$CACHE_ROOT/$KEY"

complete() {
	local b
	[ -f "$BIN_DIR/VERSIONS" ] || return 1
	for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

if complete; then
	log "cached: $BIN_DIR"
	printf '%s\n' "$BIN_DIR"
	exit 0
fi

# --- build -------------------------------------------------------------------
mkdir -p "$CACHE_ROOT"
# Serialize concurrent builds of the same key (e.g. two `make test`s).
if command -v flock >/dev/null; then
	exec 9>"$CACHE_ROOT/.$KEY.lock"
	if ! flock -n 9; then
		log "another build of $KEY is running; waiting for it"
		flock 9
	fi
	if complete; then
		log "cached (built by the other run): $BIN_DIR"
		printf '%s\n' "$BIN_DIR"
		exit 0
	fi
	# Leftovers of builds that were killed too hard to clean up (SIGKILL).
	rm -rf "$CACHE_ROOT/.tmp-$KEY".*
fi
TMP=$(mktemp -d "$CACHE_ROOT/.tmp-$KEY.XXXXXX")
# Long-running steps run as their own process group in the background, so that
# a signal to this script is acted on at once and stops the whole go build tree
# (bash would otherwise wait for a foreground child before running a trap).
CHILD=
run() {
	setsid "$@" 9>&- &
	CHILD=$!
	wait "$CHILD"
	CHILD=
}
cleanup() {
	if [ -n "$CHILD" ]; then
		kill -TERM -- "-$CHILD" 2>/dev/null || true
		wait "$CHILD" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "building into $BIN_DIR"
log "k8s.io/kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, $GO_VERSION $GOOS_/$GOARCH_"
log "cold (empty Go caches): ~9 min and ~2 GB RSS on 2 cores; with a warm GOCACHE: ~40 s"
SECONDS=0

cd "$TESTBIN"
# buildDate = commit time of the k8s.io/kubernetes tag, so the stamp does not
# change from one build to the next.
build_date=$(go list -mod=readonly -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
build_date="${build_date:-1970-01-01T00:00:00Z}"
log "go build ./cmd/... (kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)"
run nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w$(version_ldflags "$build_date")" -o "$TMP/" ./cmd/...
log "go build done after ${SECONDS}s"

log "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
cd "$TMP"   # outside testbin/: kwok resolves its own dependencies
run env GOBIN="$TMP" nice -n 10 go install "${KWOK_FLAGS[@]}" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
log "kwok done after ${SECONDS}s"

# Every binary must run and report the version it was built for.
{
	printf 'k8s.io/kubernetes %s\ngo.etcd.io/etcd/server/v3 %s\nsigs.k8s.io/kwok %s\n%s %s/%s\n' \
		"$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$GO_VERSION" "$GOOS_" "$GOARCH_"
	for b in kube-apiserver kube-controller-manager kube-scheduler; do
		out=$("$TMP/$b" --version)
		[ "$out" = "Kubernetes $K8S_VERSION" ] || die "$b --version printed '$out', want 'Kubernetes $K8S_VERSION'"
		printf '%s: %s\n' "$b" "$out"
	done
	out=$("$TMP/kubectl" version --client)
	grep -qx "Client Version: $K8S_VERSION" <<<"$out" || die "kubectl version --client printed '$out'"
	printf 'kubectl: %s\n' "$(head -n1 <<<"$out")"
	out=$("$TMP/etcd" --version)
	grep -qx "etcd Version: ${ETCD_VERSION#v}" <<<"$out" || die "etcd --version printed '$out'"
	printf 'etcd: %s\n' "$(head -n1 <<<"$out")"
	out=$("$TMP/kwok" --version)
	grep -q "${KWOK_VERSION#v}" <<<"$out" || die "kwok --version printed '$out'"
	printf 'kwok: %s\n' "$out"
} >"$TMP/VERSIONS"
sed 's/^/  /' "$TMP/VERSIONS" >&2

chmod 0755 "$TMP"
rm -rf "$BIN_DIR"   # only ever an incomplete leftover here: complete() was false
mv -T "$TMP" "$BIN_DIR"
trap - EXIT
log "done in ${SECONDS}s: $BIN_DIR ($(du -sh "$BIN_DIR" | cut -f1))"
printf '%s\n' "$BIN_DIR"
