# Cloud: the SuperLink and the distiller. The SuperLink starts the distiller's ServerApp as its own
# process from this image's locked environment (runtime dependency installation is disabled).
#   docker build -f deploy/containers/superlink.Dockerfile -t dpdistill-cloud .
FROM python:3.11-slim
RUN pip install --no-cache-dir uv==0.13.9 && useradd --uid 10003 --create-home cloud
WORKDIR /opt/dpdistill
COPY pyproject.toml uv.lock README.md ./
COPY owner_node owner_node
COPY distiller_node distiller_node
COPY shared shared
COPY deploy deploy
RUN uv sync --frozen --no-dev && chown -R cloud /opt/dpdistill
ENV PATH=/opt/dpdistill/.venv/bin:$PATH FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
USER cloud
VOLUME ["/runs", "/state"]
EXPOSE 9093
# Set CERTS and STATE=/state (see the script); runs are written where their run config's out says (/runs/...).
ENTRYPOINT ["bash", "/opt/dpdistill/deploy/roles/superlink.sh"]
