# trafficflip as a container: configuration through the environment and a mounted file
# (/etc/trafficflip/trafficflip.yaml), state in the /var/lib/trafficflip volume, secrets
# passed at run time (env or files), never in the image. Built and run by
# tests/test_container.py; `make image` builds it (docs/container.md).
#
# PYTHON_IMAGE is any Debian-based image with python3 and its venv module: the official
# slim image by default, or the local Debian base that container/base-image.sh makes on
# hosts without a registry.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/trafficflip
WORKDIR /src
# The dependencies and the build backend first, in their own layer: a change to the code
# alone reuses it. A host behind a TLS-inspecting proxy passes its CA bundle as the build
# secret pip_cert (container/build-image.sh does): mounted for this step only, in no layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
        > /tmp/requirements.txt \
    && /opt/trafficflip/bin/pip install -r /tmp/requirements.txt
COPY README.md LICENSE setup.py ./
COPY trafficflip ./trafficflip
COPY providers ./providers
# The build backend came with the dependencies: installing the code downloads nothing.
RUN /opt/trafficflip/bin/pip install --no-deps --no-build-isolation . \
    && /opt/trafficflip/bin/trafficflip --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 trafficflip \
    && useradd --uid 10001 --gid trafficflip --no-create-home \
       --home-dir /var/lib/trafficflip --shell /usr/sbin/nologin trafficflip \
    && mkdir -p /var/lib/trafficflip /etc/trafficflip \
    && chown trafficflip:trafficflip /var/lib/trafficflip
COPY --from=build /opt/trafficflip /opt/trafficflip
ENV PATH=/opt/trafficflip/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRAFFICFLIP_CONFIG=/etc/trafficflip/trafficflip.yaml \
    TRAFFICFLIP_STATE=sqlite:////var/lib/trafficflip/state.db \
    TRAFFICFLIP_API__LISTEN=0.0.0.0:8080 \
    TRAFFICFLIP_LOG_FORMAT=json
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/trafficflip
VOLUME ["/var/lib/trafficflip"]
EXPOSE 8080
# The service handles SIGTERM itself (it runs as PID 1, which has no default handler):
# scheduler, notifier and API stop, and the state is already on the volume.
STOPSIGNAL SIGTERM
# No curl in the image: ask /healthz with Python, on the address the API listens on.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["python3", "-c", "import os, sys, urllib.request; host, _, port = os.environ.get('TRAFFICFLIP_API__LISTEN', '127.0.0.1:8080').rpartition(':'); host = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]', '': '127.0.0.1'}.get(host, host); urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=3); sys.exit(0)"]
ENTRYPOINT ["trafficflip"]
CMD ["run"]
