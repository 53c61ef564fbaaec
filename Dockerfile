# rinha-shm: one image, one binary, every role (`rinha lb|api|consumer|processor`).
#
# For contest users (linux/amd64), from the official Rust image:
#   docker build --platform linux/amd64 -t rinha-shm .
# The runtime stage is distroless/cc: glibc (whose resolver, built into libc.so.6 since
# glibc 2.34, resolves `payment-processor-default` through Docker's DNS), libgcc, nothing else.
#
# Machines that cannot pull images (ours) build the same runtime from a binary built on the
# host instead: `contest/docker.sh build` (contest/Dockerfile.local, FROM scratch).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin rinha

FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /src/target/release/rinha /rinha
ENTRYPOINT ["/rinha"]
