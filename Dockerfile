# syntax=docker/dockerfile:1
#
# Herald's container image: built from source in a Rust image, run from
# distroless/cc (glibc and libgcc only: no shell, no package manager) as an
# unprivileged user. About 10 MB of Herald on a ~25 MB base.
#
#   docker build -t herald .
#   docker run --rm -p 7070:7070 -e HERALD_API_KEY=change-me herald
#
# Configuration: mount a file and point HERALD_CONFIG at it, or set
# HERALD_* variables (docs/configuration.md). The image listens on
# 0.0.0.0:7070 (HERALD_LISTEN); the health check probes that port, so keep
# it if you change the address. Checked by hadolint in scripts/deploy-check.sh.

# --- build -------------------------------------------------------------------
# The workspace's rust-version; no C toolchain beyond the image's is needed
# (every dependency is pure Rust).
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the registry and the build between image builds; the
# binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald \
    && install -D -m 0755 target/release/herald /out/herald

# --- a probe for HEALTHCHECK ---------------------------------------------------
# distroless has no curl or wget: BusyBox's static (musl) build, invoked as
# `wget`, is one 1 MB file that needs nothing from the image.
FROM busybox:1.36.1-musl AS probe

# --- run -----------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
COPY --from=probe /bin/busybox /usr/local/bin/wget
COPY LICENSE /usr/share/doc/herald/LICENSE
ENV HERALD_LISTEN=0.0.0.0:7070
# distroless's "nonroot" user; numeric so Kubernetes' runAsNonRoot can check it.
USER 65532:65532
EXPOSE 7070
# /health answers 200 while the process serves; /ready (engine reachable,
# not draining) is for load balancers and Kubernetes, not for restarts.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:7070/health"]
# On SIGTERM Herald drains (docs/deployment.md): give `docker stop` a
# --time above drain_delay + drain_window.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
