#!/usr/bin/env bash
# Install, or reuse from the cache, the Python venv with a pinned `tensorflow-cpu` that the
# TensorFlow conformance tests (tests/e2e/tensorflow.rs) run, one process per replica, on
# the TF_CONFIG the operator wrote into its pods.
#
# Needs only python3 (with the venv module) and PyPI. Logs go to stderr; the last line on
# stdout is the venv's directory, e.g.
# ~/.cache/tfjob-operator/tensorflow-cpu-2.21.0-py3.11-linux-x86_64-<hash>, holding
#   bin/python  the venv's interpreter, tensorflow importable
#   VERSIONS    what was installed, with which Python
# The name carries the versions and a short hash of the requirement line. The venv is
# filled in a temporary sibling and renamed into place once `import tensorflow` works;
# when it already exists nothing is installed.
#
# Cold (PyPI, empty pip cache): 33 s on 2 shared cores, 1.6 GB on disk; cached: < 1 s.
#
# Environment:
#   TFJOB_CACHE_DIR     cache root (default: $HOME/.cache/tfjob-operator)
#   TENSORFLOW_VERSION  tensorflow-cpu release (default: 2.21.0)
#   PYTHON              interpreter the venv is made from (default: python3)
set -euo pipefail

log() { printf 'install-tensorflow: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

TENSORFLOW_VERSION="${TENSORFLOW_VERSION:-2.21.0}"
CACHE_ROOT="${TFJOB_CACHE_DIR:-$HOME/.cache/tfjob-operator}"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null || die "$PYTHON is not on PATH"
mkdir -p "$CACHE_ROOT"
PY_TAG=$("$PYTHON" -c 'import sys, sysconfig; print("py%d.%d-%s" % (sys.version_info[0], sys.version_info[1], sysconfig.get_platform().replace("-", "_")))') ||
	die "cannot ask $PYTHON for its version"
REQ="tensorflow-cpu==$TENSORFLOW_VERSION"
hash=$(printf '%s\n' "$REQ" | sha256sum | cut -c1-10)
KEY="tensorflow-cpu-${TENSORFLOW_VERSION}-${PY_TAG}-${hash}"
DIR="$CACHE_ROOT/$KEY"

complete() { [ -x "$DIR/bin/python" ] && [ -f "$DIR/VERSIONS" ]; }

if complete; then
	log "cached: $DIR"
	printf '%s\n' "$DIR"
	exit 0
fi

exec 9>"$CACHE_ROOT/.$KEY.lock"
if command -v flock >/dev/null && ! flock -n 9; then
	log "another install of $KEY is running; waiting for it"
	flock 9
fi
if complete; then
	log "cached (installed by the other run): $DIR"
	printf '%s\n' "$DIR"
	exit 0
fi
rm -rf "$CACHE_ROOT/.tmp-$KEY".*
TMP=$(mktemp -d "$CACHE_ROOT/.tmp-$KEY.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP

# The venv is made and checked in TMP, then renamed into place (below: its scripts' paths
# are rewritten; bin/python finds its prefix from its own location).
log "installing $REQ with $("$PYTHON" --version 2>&1) into $DIR"
SECONDS=0
"$PYTHON" -m venv "$TMP/venv" >&2 || die "python3 -m venv failed (is the venv module installed?)"
"$TMP/venv/bin/python" -m pip install --quiet --no-input "$REQ" >&2 ||
	die "pip install $REQ failed (is PyPI reachable?)"
log "pip install done after ${SECONDS}s"
ver=$("$TMP/venv/bin/python" -c 'import os; os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"; import tensorflow as tf; print(tf.__version__)' 2>/dev/null) ||
	die "import tensorflow failed in the new venv"
[ "$ver" = "$TENSORFLOW_VERSION" ] || die "installed tensorflow $ver, wanted $TENSORFLOW_VERSION"
printf '%s\n%s\n' "$REQ" "$("$PYTHON" --version 2>&1) $PY_TAG" >"$TMP/venv/VERSIONS"
rm -rf "$DIR"
mv -T "$TMP/venv" "$DIR"
# Re-point the moved venv: its pyvenv.cfg names only the base interpreter, so only the
# scripts' shebangs and bin/activate name the old path; bin/python itself works as is.
grep -rlF "$TMP/venv" "$DIR/bin" 2>/dev/null | xargs -r sed -i "s|$TMP/venv|$DIR|g"
"$DIR/bin/python" -c 'import sys; assert sys.prefix == sys.argv[1], sys.prefix' "$DIR" ||
	die "the moved venv does not run from $DIR"
log "done in ${SECONDS}s: $DIR ($(du -sh "$DIR" | cut -f1))"
printf '%s\n' "$DIR"
