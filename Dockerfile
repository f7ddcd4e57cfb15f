# The operator image: a release build in the Rust image, run from distroless as non-root.
#   docker build -t tfjob-operator:dev .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# glibc and libgcc_s, nothing else; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tfjob-operator /usr/local/bin/tfjob-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tfjob-operator"]
