# syntax=docker/dockerfile:1
# The tcpobs image, for the DaemonSet in deploy/kubernetes:
#
#   docker build -t tcpobs:0.1.0 .
#
# The build stage prepares a Debian 12 machine as `cargo xtask setup --build-only` does for a
# developer (LLVM 22 from the machine's Debian sources, the nightly toolchain's rust-src,
# bpf-linker 0.13.0 built against LLVM 22) and builds the daemon, kernel programs included.
# If your Debian sources lack llvm-22-dev, add the LLVM project's apt repository for bookworm
# before the setup step.

FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo xtask setup --build-only
RUN cargo build --release --locked --package tcpobs

# The daemon needs only glibc. It runs as root with the capabilities the DaemonSet grants; the
# DaemonSet's arguments replace CMD with its configuration file.
FROM debian:bookworm-slim
COPY --from=build /src/target/release/tcpobs /usr/local/bin/tcpobs
EXPOSE 9752
ENTRYPOINT ["/usr/local/bin/tcpobs"]
CMD ["--listen", "0.0.0.0:9752"]
