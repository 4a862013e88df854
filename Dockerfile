# syntax=docker/dockerfile:1
#
# mm-sidecar in a container.
#
#   docker build -t mm-sidecar .
#   docker run -d --name mm-sidecar \
#     -v mm-sidecar-state:/var/lib/mm-sidecar \
#     -v "$PWD/config.toml:/etc/mm-sidecar/config.toml:ro" \
#     -e MM_SIDECAR_TOKEN \
#     mm-sidecar
#
# The healthcheck calls http://127.0.0.1:9181/healthz from inside the container, so the
# default `listen = "127.0.0.1:9181"` works as is; to scrape /metrics from outside, set
# `listen = "0.0.0.0:9181"` and publish the port (e.g. -p 127.0.0.1:9181:9181).
# `mm-sidecar check` runs the same way: docker run --rm mm-sidecar check
# Docker waits 10 s after SIGTERM by default, the same as shutdown_timeout; allow a margin
# for persisting the outbox with --stop-timeout 30 (compose: stop_grace_period: 30s).

# Build stage: turn the project and its dependencies into wheels.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# With the postgresql extra (psycopg): the same image runs a replica of an HA install; with
# the fast extra (uvloop), event_loop = "uvloop" works in it too.
RUN pip wheel --wheel-dir /wheels '.[postgresql,fast]'

# Runtime stage: the same slim base, the wheels installed offline, no compiler, no sources.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MM_SIDECAR_CONFIG=/etc/mm-sidecar/config.toml
# Mounted rather than copied, so the wheels never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels 'mattermost-webhook-sidecar[postgresql,fast]'
# A fixed numeric uid lets orchestrators check runAsNonRoot and lets volumes be prepared.
RUN groupadd --system --gid 10001 mm-sidecar \
 && useradd --system --uid 10001 --gid mm-sidecar --no-create-home \
        --home-dir /var/lib/mm-sidecar --shell /usr/sbin/nologin mm-sidecar \
 && install -d -o mm-sidecar -g mm-sidecar -m 0700 /var/lib/mm-sidecar \
 && install -d -m 0755 /etc/mm-sidecar
# Declared after the chown so a fresh named volume starts owned by the sidecar's user.
VOLUME ["/var/lib/mm-sidecar"]
USER 10001:10001
WORKDIR /var/lib/mm-sidecar
EXPOSE 9181
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9181/healthz', timeout=3)"]
# Exec form: mm-sidecar is PID 1 and receives SIGTERM itself (graceful drain, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["mm-sidecar"]
CMD ["run"]
