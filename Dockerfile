# syntax=docker/dockerfile:1
# The HearTalk runtime image: `heartalk` (the supervisor, PID 1) and
# `heartalk-worker`, built in a Rust builder stage and copied into distroless
# cc (glibc, CA certificates, no shell, no package manager). Owned by the
# deployment assets (issue #8); linted by hadolint in scripts/checks/containers.sh.
#
#   docker build -t heartalk .
#   docker run --read-only --tmpfs /run/heartalk:uid=65532,gid=65532,mode=0700 \
#     -v heartalk-logs:/var/log/heartalk -v "$PWD/compose/secrets:/run/secrets:ro" \
#     -e JWT_SECRET_FILE=/run/secrets/jwt_secret \
#     -e HEARTALK_API_KEY_FILE=/run/secrets/heartalk_api_key -p 8001:8001 heartalk
#
# Secrets as files (*_FILE), readable by 65532 and not world-readable:
# docs/deployment.md "Secrets".

# ---- builder ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependency layer: the manifests plus empty stand-ins for every crate of the
# workspace, so the (slow) dependency build is cached until Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY supervisor/Cargo.toml supervisor/
COPY worker/Cargo.toml worker/
COPY tests/Cargo.toml tests/
RUN mkdir -p shared/src supervisor/src worker/src tests/src/bin \
    && touch shared/src/lib.rs supervisor/src/lib.rs worker/src/lib.rs tests/src/lib.rs \
    && for f in supervisor/src/main.rs worker/src/main.rs \
         tests/src/bin/test-worker.rs tests/src/bin/mock-ark.rs; do \
         echo 'fn main() {}' > "$f"; \
       done
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked -p heartalk -p heartalk-worker

# The real sources. COPY keeps the context's mtimes, which may be older than
# the stand-ins' build: touch the crate roots so cargo rebuilds our crates.
# The two binaries lose their debug sections: the release profile keeps line
# tables for backtraces on a developer's machine, which were 67 of the
# binaries' 88 MB in the image; symbol names stay, so a backtrace still names
# its functions.
COPY shared/src shared/src
COPY supervisor/src supervisor/src
COPY worker/src worker/src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    touch shared/src/lib.rs supervisor/src/lib.rs supervisor/src/main.rs \
          worker/src/lib.rs worker/src/main.rs \
    && cargo build --release --locked -p heartalk -p heartalk-worker \
    && mkdir -p /out/bin /out/var/log/heartalk /out/run/heartalk \
    && cp target/release/heartalk target/release/heartalk-worker /out/bin/ \
    && strip --strip-debug /out/bin/heartalk /out/bin/heartalk-worker

# ---- runtime ---------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="heartalk" \
      org.opencontainers.image.description="HearTalk AI service: the heartalk supervisor (PID 1) and its heartalk-worker processes" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/bin/ /usr/local/bin/
# The two writable paths of a read-only root filesystem (mount volumes here):
# the log directory and the control socket's directory.
COPY --from=builder --chown=65532:65532 /out/var/log/heartalk /var/log/heartalk
COPY --from=builder --chown=65532:65532 /out/run/heartalk /run/heartalk
COPY deploy/ecosystem.container.toml /etc/heartalk/ecosystem.toml
COPY config/keywords.json /etc/heartalk/keywords.json

# HEARTALK_CONFIG lets `heartalk status|reload|stop` find the control socket
# without -c (`docker exec <c> heartalk status`).
ENV HEARTALK_CONFIG=/etc/heartalk/ecosystem.toml \
    NODE_ENV=production

USER 65532:65532
WORKDIR /etc/heartalk

# 8001: the service; 9464: fleet-wide /metrics (admin port).
EXPOSE 8001 9464
# The supervisor drains on SIGTERM: workers finish in-flight requests for up
# to 30 s, SIGKILL at kill_timeout (35 s). Give the container 45 s to stop.
STOPSIGNAL SIGTERM
# Exec form, no shell or curl: `heartalk health` GETs
# http://127.0.0.1:8001/api/v1/health and exits 0 on 200, 1 otherwise.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["heartalk", "health"]

# The supervisor is PID 1 (it reaps orphans and forwards signals itself):
# no tini, no PM2.
ENTRYPOINT ["heartalk", "run"]
CMD ["-c", "/etc/heartalk/ecosystem.toml"]
