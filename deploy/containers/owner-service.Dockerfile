# Hospital: the owner service. The only container that mounts the private data and the ledger.
#   docker build -f deploy/containers/owner-service.Dockerfile -t dpdistill-owner .
FROM python:3.11-slim
RUN pip install --no-cache-dir uv==0.13.9 && useradd --uid 10001 --create-home owner
WORKDIR /opt/dpdistill
COPY pyproject.toml uv.lock README.md ./
COPY owner_node owner_node
COPY distiller_node distiller_node
COPY shared shared
COPY deploy deploy
# Exactly the locked versions; no dev tools.
RUN uv sync --frozen --no-dev && chown -R owner /opt/dpdistill
ENV PATH=/opt/dpdistill/.venv/bin:$PATH FLWR_TELEMETRY_ENABLED=0
USER owner
# /config/owner.toml points at /data (private, read-only) and /ledger (durable, read-write).
VOLUME ["/data", "/ledger"]
EXPOSE 50051
ENTRYPOINT ["dpdistill", "owner-serve", "--config", "/config/owner.toml"]
