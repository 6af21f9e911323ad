# A stand-in for the compose example's BIND image (internetsystemsconsortium/bind9) on hosts
# that reach no registry: Debian's bind9 on the same base as trafficflip's image, with the
# paths the compose example uses (/usr/sbin/named, /etc/bind, /var/cache/bind, user bind).
# Used by tests/test_compose.py only.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bind9 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/named && chown bind:bind /run/named
