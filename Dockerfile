# One image per service: docker build --build-arg SERVICE=order-api .
# (docker-compose.yml builds all three.) protox compiles the contract, so no
# protoc is needed; librdkafka is built from source by rdkafka-sys.
#
# The workspace is compiled once for the three services: only the last stage reads
# SERVICE, so the stages before it are the same for every image and the second and
# third builds take them from the build cache (BuildKit or the classic builder).
# cargo-chef keeps the dependencies in a layer of their own, rebuilt only when a
# Cargo.toml or Cargo.lock changes, not when the sources do.
FROM rust:1.95-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.77
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "$CARGO_CHEF_VERSION" \
    && rm -rf "$CARGO_HOME/registry"
WORKDIR /src

# The dependency recipe: every manifest and Cargo.lock, without the sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies of the three binaries, with the same selection as the build below
# (so the same features are unified and nothing is compiled twice).
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    --bin order-api --bin payment-service --bin notification-service
COPY . .
RUN cargo build --release --locked --bin order-api --bin payment-service --bin notification-service \
    && mkdir /out \
    && cp target/release/order-api target/release/payment-service target/release/notification-service /out/

FROM debian:bookworm-slim
# curl: the compose healthchecks ask /readyz; the Kubernetes preStop hook posts /drain.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 foodorder
ARG SERVICE=order-api
COPY --from=builder /out/${SERVICE} /usr/local/bin/service
USER foodorder
ENTRYPOINT ["/usr/local/bin/service"]
