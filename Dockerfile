# A small image for `taskapi serve` (and `taskapi migrate`, run once per deploy).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Runtime dependencies only, pinned with hashes (requirements.lock; no embedded PostgreSQL, no test
# tools), then taskapi itself as a regular package: sql/ ships inside it as api.sql.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY api ./api
COPY sql ./sql
RUN pip install --no-deps . && rm -rf api sql && useradd --system --no-create-home taskapi
USER taskapi
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
# Ready, not merely alive: database reachable, schema migrated, no isolation finding (else 503).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
CMD ["taskapi", "serve"]
