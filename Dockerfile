# The operator image, built with a Docker engine that can pull docker.io's Rust image: a
# static release build (x86_64-unknown-linux-musl) in a scratch image, run as uid 65532.
#   docker build -t tfjob-operator:dev .
# Without Docker or registry access, `make image` (hack/build-image.sh) builds the same binary
# on the host and the same last stage from the Containerfile with podman or buildah.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --locked --release --target x86_64-unknown-linux-musl --bin tfjob-operator

# Nothing but the binary (no libc, no shell); uid 65532. Kept alike with the Containerfile.
FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/tfjob-operator /usr/local/bin/tfjob-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tfjob-operator"]
