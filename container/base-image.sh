#!/bin/sh
# Build a local Debian base image with Python 3 for the Dockerfile's PYTHON_IMAGE, for
# hosts that cannot pull the official python image (no registry reachable). Debian's
# archive is enough: debootstrap a minimal bookworm, import it as an image.
#
# The image is tagged with a hash of this script, so a second run finds it in the engine's
# own storage and returns at once; editing the package list builds a new one.
# Prints the image name on stdout. Needs root (debootstrap) and podman or docker.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/engine.sh"

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
key=$(sha256sum "$0" | cut -c1-12)
image="localhost/trafficflip-base:$SUITE-$key"

if engine image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi

# The mirror apt already uses on this host, unless DEBIAN_MIRROR says otherwise.
mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources \
    2>/dev/null | head -n1)}
mirror=${mirror:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d "${TMPDIR:-/tmp}/trafficflip-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
echo "building $image from $mirror (debootstrap $SUITE, about a minute)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >&2
# Nothing in the image needs apt's downloaded indexes and packages, or documentation.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" -c . | engine import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >&2
echo "built $image in $(( $(date +%s) - start ))s" >&2
echo "$image"
