# pgcutover: multi-stage build of the release binary, slim runtime with the PostgreSQL client
# tools the schema copy needs (pg_dump, pg_restore, psql). Use client tools of your source's
# major version or newer: override PG_MAJOR (PGDG packages provide every supported version).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY config ./config
RUN cargo build --release --locked --bin pgcutover

FROM debian:bookworm-slim
ARG PG_MAJOR=15
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client-${PG_MAJOR} \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgcutover --create-home pgcutover
COPY --from=build /src/target/release/pgcutover /usr/local/bin/pgcutover
COPY config/pgcutover.example.toml /etc/pgcutover/pgcutover.example.toml
ENV PGCUTOVER_STATE_DIR=/var/lib/pgcutover/state \
    PGCUTOVER_PG_BINDIR=/usr/lib/postgresql/${PG_MAJOR}/bin
USER pgcutover
WORKDIR /var/lib/pgcutover
VOLUME ["/var/lib/pgcutover/state"]
EXPOSE 8089
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8089/healthz || exit 1
ENTRYPOINT ["pgcutover"]
CMD ["serve", "--config", "/etc/pgcutover/pgcutover.toml"]
