# The gateway's container image: `agentcore serve` as a non-root user, with the PostgreSQL
# and Redis backends installed, so one image serves both a single instance (SQLite under
# /var/lib/agentcore) and the many-instance deployment of docker-compose.yml.
#
#   docker build -t agentcore-gateway .
#   docker run --rm -p 8001:8001 -v agentcore-data:/var/lib/agentcore agentcore-gateway
#   docker run --rm -v agentcore-data:/var/lib/agentcore agentcore-gateway keys create --tenant acme
#
# No container runtime runs on the project's machines: tests/test_deploy_files.py checks this
# file (user, health check, port, the command against the CLI) but it has not been built
# there. docs/deployment.md, "Container image and compose".

# -- build: a wheel of the project, nothing else ---------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN wheel="$(ls /wheels/*.whl)" \
    && pip install "${wheel}[postgres,redis]" \
    && rm -rf /wheels

# A fixed uid, so volumes and Kubernetes' runAsUser can name it; no login shell, no home files.
RUN groupadd --system --gid 10001 agentcore \
    && useradd --system --uid 10001 --gid agentcore --no-create-home \
       --home-dir /var/lib/agentcore --shell /usr/sbin/nologin agentcore \
    && install -d -o agentcore -g agentcore -m 0700 /var/lib/agentcore

# Every subcommand (serve, worker, keys) finds the same data directory. Authentication is on:
# the image listens on 0.0.0.0, where `auth.mode = "off"` is refused (docs/authentication.md);
# keys are created with `agentcore keys create` against the same database. No secret is set
# here: the database URL, JWT secret and webhook key file come from the environment or volumes.
ENV AGENTCORE_DATABASE__DATA_DIR=/var/lib/agentcore \
    AGENTCORE_AUTH__MODE=api_key
VOLUME ["/var/lib/agentcore"]
WORKDIR /var/lib/agentcore
USER agentcore:agentcore

EXPOSE 8001
# Liveness only (the process answers); readiness, which also asks the database, is
# /api/v1/health/ready. python:slim has no curl, so the standard library asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8001/api/v1/health/live', timeout=2).status != 200)"]

ENTRYPOINT ["agentcore"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8001", "--data-dir", "/var/lib/agentcore"]
