# Build: docker build -t modelcache .
# Run:   docker run -p 8080:8080 -p 5000:5000 -v modelcache-data:/app/data modelcache
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN ./scripts/fetch-models.sh /src/models && ./scripts/fetch-e5.sh /src/models && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/modelcache /usr/local/bin/modelcache
COPY --from=build /src/models /app/models
COPY config.toml /app/config.toml
ENV MODELCACHE_SERVER_LISTEN=0.0.0.0:8080 \
    MODELCACHE_SERVER_ADMIN_LISTEN=0.0.0.0:5000
EXPOSE 8080 5000
VOLUME ["/app/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["modelcache", "serve", "--config", "/app/config.toml"]
