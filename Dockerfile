# weft's image: one binary, `weft`, for every role (server, agent, kube-manager).
#
# The build stage uses the toolchain CI uses (rust-toolchain: Rust 1.95 on Debian bookworm)
# and builds with the lock file, as CI does. The runtime stage carries no datapath tools: the
# agent speaks netlink to the kernel itself (nftables, conntrack, addresses) and runs no program.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package weft \
 && install -D -m 0755 target/release/weft /out/weft

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/weft --create-home weft
COPY --from=build /out/weft /usr/local/bin/weft
# The server and kube-manager run unprivileged; the agent's container runs as root with
# NET_ADMIN (docker-compose.yml, deploy/kubernetes/agent.yaml).
USER weft
WORKDIR /var/lib/weft
ENV WEFT_DATA_DIR=/var/lib/weft
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s CMD ["weft", "ready"]
ENTRYPOINT ["weft"]
CMD ["server", "--listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:8081"]
