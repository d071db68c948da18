# weft's image: one binary, `weft`, for every role (server, agent, kube-manager), and the CNI
# plugin the agent DaemonSet's init container installs on each node (`weft install-cni`):
# weft-cni with the reference loopback and portmap, in /usr/local/lib/weft/cni.
#
# The build stage uses the toolchain CI uses (rust-toolchain: Rust 1.95 on Debian bookworm)
# and builds with the lock file, as CI does. The runtime stage carries no datapath tools: the
# agent speaks netlink to the kernel itself (nftables, conntrack, addresses) and runs no program.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package weft --package weft-cni \
 && install -D -m 0755 target/release/weft /out/weft \
 && install -D -m 0755 target/release/weft-cni /out/cni/weft-cni

# The reference plugins containerd needs beside weft's (loopback) and the conflist chains
# (portmap), from Debian's package, without the rest of it in the runtime image.
FROM debian:bookworm-slim AS cni-plugins
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containernetworking-plugins \
 && install -D -m 0755 /usr/lib/cni/loopback /out/cni/loopback \
 && install -D -m 0755 /usr/lib/cni/portmap /out/cni/portmap

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/weft --create-home weft
COPY --from=build /out/weft /usr/local/bin/weft
COPY --from=build /out/cni/ /usr/local/lib/weft/cni/
COPY --from=cni-plugins /out/cni/ /usr/local/lib/weft/cni/
# The server and kube-manager run unprivileged; the agent's container runs as root with
# NET_ADMIN (docker-compose.yml, deploy/kubernetes/agent.yaml).
USER weft
WORKDIR /var/lib/weft
ENV WEFT_DATA_DIR=/var/lib/weft
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s CMD ["weft", "ready"]
ENTRYPOINT ["weft"]
CMD ["server", "--listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:8081"]
