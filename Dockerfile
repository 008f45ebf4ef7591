# One image per service: docker build --build-arg SERVICE=order-api .
# (docker-compose.yml builds all three.) protox compiles the contract, so no
# protoc is needed; librdkafka is built from source by rdkafka-sys.
FROM rust:1.95-bookworm AS build
ARG SERVICE=order-api
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p "$SERVICE" && cp "target/release/$SERVICE" /usr/local/bin/service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 foodorder
COPY --from=build /usr/local/bin/service /usr/local/bin/service
USER foodorder
ENTRYPOINT ["/usr/local/bin/service"]
