#!/usr/bin/env bash
# Build the operator image (default tfjob-operator:dev) with whichever engine answers:
# - a Docker engine (`docker info` answers): `docker build` of the Dockerfile, which builds
#   the binary inside docker.io's Rust image (needs that registry);
# - else podman, else buildah: a static release binary built here
#   (`cargo build --release --target x86_64-unknown-linux-musl`, the target added with rustup
#   when missing; ring's C is compiled with musl-gcc when installed, Debian's musl-tools), put
#   alone in a temporary build context outside the clone, and the Containerfile (FROM
#   scratch) built from it. No registry is needed.
#
# Nothing is cached in the clone: cargo builds into CARGO_TARGET_DIR (the Makefile's default,
# outside the clone), the image goes to the engine's own storage. Logs go to stderr; the last
# line on stdout is the image reference.
#
# Usage: hack/build-image.sh [--podman-or-nothing]
#   --podman-or-nothing  (make test) build with podman only; without podman print an empty
#                        line and exit 0, so the image test is left out rather than failed.
# Environment:
#   IMAGE             the reference to tag (default: tfjob-operator:dev)
#   CARGO_TARGET_DIR  cargo's target directory (default: the Makefile's)
set -euo pipefail

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-tfjob-operator:dev}"
TARGET=x86_64-unknown-linux-musl
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tfjob-operator/cargo-target-$(pwd | cksum | cut -d' ' -f1)}"

engine=
if [ "${1:-}" = --podman-or-nothing ]; then
	if ! command -v podman >/dev/null; then
		log "no podman on PATH: the image is not built and its e2e test is left out (apt-get install podman)"
		echo
		exit 0
	fi
	engine=podman
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	engine=docker
elif command -v podman >/dev/null; then
	engine=podman
elif command -v buildah >/dev/null; then
	engine=buildah
else
	die "no container engine: neither a Docker engine that answers, nor podman, nor buildah (apt-get install podman)"
fi

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
labels=(--label "org.opencontainers.image.title=tfjob-operator" --label "org.opencontainers.image.revision=$revision")

if [ "$engine" = docker ]; then
	log "docker build of the Dockerfile as $IMAGE"
	docker build "${labels[@]}" -t "$IMAGE" . >&2
	printf '%s\n' "$IMAGE"
	exit 0
fi

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
	log "adding the Rust target $TARGET (rustup)"
	rustup target add "$TARGET" >&2 || die "rustup target add $TARGET failed"
fi
command -v musl-gcc >/dev/null || log "no musl-gcc (Debian's musl-tools): ring's C is compiled with cc"

SECONDS=0
log "cargo build --release --target $TARGET (cold: about 13 min on 2 busy cores with fat LTO; warm: seconds)"
cargo build --locked --release --target "$TARGET" --bin tfjob-operator >&2
bin="$CARGO_TARGET_DIR/$TARGET/release/tfjob-operator"
# Static: no program interpreter, so it runs in an image with no libc.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
	die "$bin is dynamically linked"
fi
log "binary built in ${SECONDS}s: $(du -h "$bin" | cut -f1), static"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/tfjob-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/tfjob-operator"
cp Containerfile "$ctx/Containerfile"
case "$engine" in
podman) podman build "${labels[@]}" -f "$ctx/Containerfile" -t "$IMAGE" "$ctx" >&2 ;;
buildah) buildah build "${labels[@]}" -f "$ctx/Containerfile" -t "$IMAGE" "$ctx" >&2 ;;
esac
log "$engine built $IMAGE in ${SECONDS}s"
printf '%s\n' "$IMAGE"
