#!/bin/sh
# Build the trafficflip image from the Dockerfile with podman (or docker). The base is
# $PYTHON_IMAGE if set; else the official python image if it is present or can be pulled;
# else a local Debian base (base-image.sh), built once and kept in the engine's storage.
# Prints the image name on stdout; the build's output goes to stderr.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/engine.sh"
IMAGE=${IMAGE:-localhost/trafficflip:latest}
OFFICIAL=docker.io/library/python:3.11-slim-bookworm

base=${PYTHON_IMAGE:-}
if [ -z "$base" ]; then
    if engine image inspect "$OFFICIAL" >/dev/null 2>&1 \
            || timeout "${PULL_TIMEOUT:-60}" "$ENGINE" pull -q "$OFFICIAL" >/dev/null 2>&1; then
        base=$OFFICIAL
    else
        echo "$OFFICIAL cannot be pulled: using a local Debian base" >&2
        base=$("$here/base-image.sh")
    fi
fi
echo "building $IMAGE on $base with $ENGINE" >&2
# The OCI image format has no HEALTHCHECK: podman keeps it only in the docker format.
format=""
[ "$ENGINE" = podman ] && format="--format docker"
# The pip steps download packages: the build needs the host's network, and the host's CA
# bundle where a TLS-inspecting proxy stands between it and the package index.
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
secret=""
[ -f "$cert" ] && secret="--secret id=pip_cert,src=$cert"
engine build $format $secret --network host --build-arg PYTHON_IMAGE="$base" -t "$IMAGE" \
    -f "$here/../Dockerfile" "$here/.." >&2
echo "$IMAGE"
