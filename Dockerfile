# syntax=docker/dockerfile:1
# trafficflip as a container: configuration only through the environment and a mounted file
# (/etc/trafficflip/trafficflip.yaml), state in the /var/lib/trafficflip volume.
# Written carefully but not built on the development machine (it runs no Docker engine).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/trafficflip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trafficflip ./trafficflip
COPY providers ./providers
RUN /opt/trafficflip/bin/pip install .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 trafficflip \
    && useradd --system --uid 10001 --gid trafficflip --no-create-home \
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
USER trafficflip
WORKDIR /var/lib/trafficflip
VOLUME ["/var/lib/trafficflip"]
EXPOSE 8080
# The service handles SIGTERM itself: scheduler, notifier and API stop, state is on disk.
STOPSIGNAL SIGTERM
# The slim image has no curl: ask /healthz with Python, on the port the API listens on.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-c", "import os, sys, urllib.request; host, _, port = os.environ.get('TRAFFICFLIP_API__LISTEN', '127.0.0.1:8080').rpartition(':'); host = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]', '': '127.0.0.1'}.get(host, host); urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=3); sys.exit(0)"]
ENTRYPOINT ["trafficflip"]
CMD ["run"]
