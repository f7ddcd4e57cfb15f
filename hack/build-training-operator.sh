#!/usr/bin/env bash
# Build, or reuse from the cache, Kubeflow's training-operator, which `make bench` runs side by
# side with ours: `go install github.com/kubeflow/training-operator/cmd/training-operator.v1@$V`.
# If the go command refuses to install the module as is (a replace or exclude directive in its
# go.mod), it is built from a temporary module that requires it and copies its replace
# directives. `make bench` runs it, and `make test` (the migration e2e test).
#
# Needs only Go and the Go module proxy (no git clone, no other download). Logs go to stderr;
# the last line on stdout is the directory holding
#   training-operator  the binary (cmd/training-operator.v1)
#   tfjobs-crd.yaml    its TFJob CRD, copied from the module (manifests/base/crds/kubeflow.org_tfjobs.yaml)
#   VERSIONS           what was built, with which Go
# e.g. ~/.cache/tfjob-operator/training-operator-v1.9.2-go1.26-linux-amd64-<hash>. The name
# carries the versions and a short hash of the build flags. The directory is filled in a
# temporary sibling and renamed into place once the binary runs; when it already exists the
# script returns at once (no go command at all beyond `go env`).
#
# Environment:
#   TFJOB_CACHE_DIR            cache root (default: $HOME/.cache/tfjob-operator)
#   TRAINING_OPERATOR_VERSION  release (default: v1.9.2)
#   TRAINING_OPERATOR_VIA_MODULE=1  always take the temporary-module path (to test it)
set -euo pipefail

log() { printf 'build-training-operator: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

VERSION="${TRAINING_OPERATOR_VERSION:-v1.9.2}"
CACHE_ROOT="${TFJOB_CACHE_DIR:-$HOME/.cache/tfjob-operator}"
MODULE="github.com/kubeflow/training-operator"
PKG="$MODULE/cmd/training-operator.v1"
CRD_IN_MODULE="manifests/base/crds/kubeflow.org_tfjobs.yaml"

command -v go >/dev/null || die "the go command is not on PATH"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$CACHE_ROOT" 2>/dev/null || { mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT"; }   # outside any module

{ read -r GO_VERSION; read -r GOOS_; read -r GOARCH_; } < <(go env GOVERSION GOOS GOARCH)
GO_MINOR=$(printf '%s\n' "$GO_VERSION" | sed -n 's/^\(go[0-9]*\.[0-9]*\).*/\1/p')
[ -n "$GO_MINOR" ] || die "cannot parse go version '$GO_VERSION'"

FLAGS=(-trimpath -ldflags "-s -w")
hash=$(printf '%s\n' "${FLAGS[@]}" "$PKG" "$CRD_IN_MODULE" | sha256sum | cut -c1-10)
KEY="training-operator-${VERSION}-${GO_MINOR}-${GOOS_}-${GOARCH_}-${hash}"
DIR="$CACHE_ROOT/$KEY"

complete() { [ -x "$DIR/training-operator" ] && [ -s "$DIR/tfjobs-crd.yaml" ] && [ -f "$DIR/VERSIONS" ]; }

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

# Runs a long step as its own process group in the background, so that a signal to this
# script stops the whole go build tree at once.
run() {
	local rc=0
	setsid "$@" 9>&- &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=
	return "$rc"
}

# The module's directory in the module cache (downloaded through the proxy when missing).
module_dir() {
	local d
	d=$(go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[ -f "$d/$CRD_IN_MODULE" ] || die "$MODULE@$VERSION: no $CRD_IN_MODULE in '$d'"
	printf '%s\n' "$d"
}

# The fallback: a throwaway module that requires training-operator and carries its replace
# directives, built with `go build`.
build_in_temp_module() {
	local mod="$TMP/mod" src
	src=$(module_dir)
	mkdir -p "$mod"
	(
		cd "$mod"
		go mod init tfjob-bench/training-operator-build >/dev/null 2>&1
		# Its replace directives, single-line and block form, as `go mod edit` arguments.
		awk '
			/^replace[[:space:]]*\(/ { block = 1; next }
			block && /^\)/ { block = 0; next }
			block { print; next }
			/^replace[[:space:]]/ { sub(/^replace[[:space:]]+/, ""); print }
		' "$src/go.mod" | while read -r line; do
			line=${line%%//*}
			[ -n "${line// /}" ] || continue
			# "old [v] => new [v]" -> old[@v]=new[@v]
			old=${line%%=>*}; new=${line#*=>}
			read -r o ov <<<"$old"; read -r n nv <<<"$new"
			go mod edit -replace="${o}${ov:+@$ov}=${n}${nv:+@$nv}"
		done
		# The package, not just the module: its dependencies' requirements and sums too.
		go get "$PKG@$VERSION"
	)
	(cd "$mod" && run env nice -n 10 go build "${FLAGS[@]}" -o "$TMP/training-operator" "$PKG")
}

log "building $PKG@$VERSION with $GO_VERSION into $DIR"
log "cold (empty Go caches): several minutes of CPU on 2 shared cores; warm GOCACHE: seconds"
SECONDS=0
errs="$TMP/go-install.err"
if [ "${TRAINING_OPERATOR_VIA_MODULE:-0}" = 1 ]; then
	log "TRAINING_OPERATOR_VIA_MODULE=1: building it from a temporary module"
	build_in_temp_module
	how="go build in a temporary module requiring $MODULE@$VERSION"
elif run env GOBIN="$TMP" nice -n 10 go install "${FLAGS[@]}" "$PKG@$VERSION" 2>"$errs"; then
	cat "$errs" >&2
	[ -x "$TMP/training-operator.v1" ] || die "go install left no training-operator.v1 in $TMP"
	mv "$TMP/training-operator.v1" "$TMP/training-operator"
	how="go install $PKG@$VERSION"
elif cat "$errs" >&2 && grep -q -E 'replace|exclude|must not contain directives' "$errs"; then
	log "go install refused the module as is; building it from a temporary module"
	build_in_temp_module
	how="go build in a temporary module requiring $MODULE@$VERSION"
else
	die "go install $PKG@$VERSION failed"
fi
log "build done after ${SECONDS}s"

# The binary must say it is this version of the module (go version -m reads the build info).
built=$(go version -m "$TMP/training-operator" | awk '$1 == "mod" || $1 == "dep" { if ($2 == m) print $3 }' m="$MODULE")
[ "$built" = "$VERSION" ] || die "the binary was built from $MODULE ${built:-?}, not $VERSION"
out=$("$TMP/training-operator" --help 2>&1 || true)
grep -q -- "-controller-threads" <<<"$out" || die "training-operator --help did not list --controller-threads: $out"
cp "$(module_dir)/$CRD_IN_MODULE" "$TMP/tfjobs-crd.yaml"
chmod 0644 "$TMP/tfjobs-crd.yaml"
printf '%s %s\n%s %s/%s\n%s\n' "$MODULE" "$VERSION" "$GO_VERSION" "$GOOS_" "$GOARCH_" "$how" >"$TMP/VERSIONS"
rm -rf "$TMP/mod" "$errs"
chmod 0755 "$TMP"
rm -rf "$DIR"
mv -T "$TMP" "$DIR"
trap - EXIT
log "done in ${SECONDS}s: $DIR ($(du -sh "$DIR/training-operator" | cut -f1))"
printf '%s\n' "$DIR"
