# Sourced by the container scripts: defines `engine`, the container engine that works on
# this host (podman first, then docker), and ENGINE, its name. Exits 3 when neither works.
here=${here:-$(cd "$(dirname "$0")" && pwd)}
if [ -z "${ENGINE:-}" ]; then
    if command -v podman >/dev/null 2>&1 && CONTAINERS_CONF="$here/containers.conf" podman info >/dev/null 2>&1; then
        ENGINE=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        echo "no working container engine (podman or docker)" >&2
        exit 3
    fi
fi
export ENGINE
if [ "$ENGINE" = podman ]; then
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
fi
engine() { "$ENGINE" "$@"; }
