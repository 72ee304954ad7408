# syntax=docker/dockerfile:1

# Herald container image.
#
#   docker build -t herald .
#   docker run --rm herald check                  # prove the bundled configuration
#   docker run --rm -e HERALD_AMQP_URL=... herald # run the service (the default command)
#
# The configuration lives in /etc/herald (routes.toml, schemas/, templates/, data/). To use
# your own, mount a folder over /etc/herald or point HERALD_CONFIG at another routes.toml.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Only what the release binary is built from. data/ is compiled in (the built-in bank-holiday
# list); benches/ is needed because Cargo.toml declares its bench targets; migrations/ holds
# the ledger's schema, embedded in the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
COPY data ./data

# The caches keep downloaded crates and compiled dependencies between builds; the binary is
# copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/herald /usr/local/bin/herald

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user to run as. The configuration stays owned by root (read-only to Herald);
# only the outbox folder, where emails are written as .eml files when HERALD_SMTP_URL is
# unset, and the data folder, where the SQLite ledger is kept when HERALD_LEDGER_URL is unset
# (mount a volume on /etc/herald/data to keep it across containers), belong to the service user.
RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin herald

COPY --from=build /usr/local/bin/herald /usr/local/bin/herald
COPY routes.toml /etc/herald/routes.toml
COPY schemas /etc/herald/schemas
COPY templates /etc/herald/templates
COPY data /etc/herald/data
RUN install -d -o herald -g herald -m 0750 /etc/herald/outbox \
    && chown herald:herald /etc/herald/data

ENV HERALD_CONFIG=/etc/herald/routes.toml \
    HERALD_METRICS_ADDR=0.0.0.0:9464 \
    HERALD_LOG_FORMAT=json

USER herald:herald
WORKDIR /etc/herald

# /metrics, /healthz and /readyz
EXPOSE 9464

# Healthy when /readyz answers 200 (connected to RabbitMQ and consuming, the ledger writable). The image has no
# curl, so bash's /dev/tcp makes the request; the port follows HERALD_METRICS_ADDR. Only
# meaningful for `serve`: turn it off for other commands (compose: healthcheck: disable: true).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${HERALD_METRICS_ADDR##*:} && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["herald"]
CMD ["serve"]
