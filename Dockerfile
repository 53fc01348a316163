# Multi-stage build: compile with the Rust toolchain, run on a small Debian base as a
# non-root user. protoc comes from the protoc-bin-vendored crate; nothing else is fetched.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mailledger

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin mailledger
COPY --from=build /src/target/release/mailledger /usr/local/bin/mailledger
USER 10001
ENV MAILLEDGER_HTTP_ADDR=0.0.0.0:8080 MAILLEDGER_GRPC_ADDR=0.0.0.0:50051 MAILLEDGER_METRICS_ADDR=0.0.0.0:9090
EXPOSE 8080 50051 9090
ENTRYPOINT ["/usr/local/bin/mailledger"]
CMD ["serve"]
