# Hospital: the Flower SuperNode and the relay it runs. No torch, no data, no ledger: it holds only
# the SuperNode's auth key and the relay's client certificate, and talks to the owner service.
#   docker build -f deploy/containers/supernode.Dockerfile -t dpdistill-supernode .
FROM python:3.11-slim
RUN useradd --uid 10002 --create-home relay
WORKDIR /opt/dpdistill
COPY pyproject.toml README.md ./
COPY shared shared
COPY owner_node owner_node
COPY distiller_node distiller_node
COPY deploy deploy
# flwr, grpc and protobuf pinned as in uv.lock; dpdistill itself without dependencies (the relay
# needs only shared/rpc, and a test checks it imports no torch).
RUN pip install --no-cache-dir "flwr==1.41.0" "grpcio==1.85.1" "protobuf==6.33.6" \
    && pip install --no-cache-dir --no-deps .
ENV FLWR_HOME=/home/relay/.flwr FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 DPDISTILL_VENV=/usr/local
USER relay
# Set CA, NODE_KEY, SUPERLINK_ADDRESS, OWNER_ADDRESS, OWNER_CA, RELAY_CERT, RELAY_KEY (see the script).
ENTRYPOINT ["bash", "/opt/dpdistill/deploy/roles/supernode.sh"]
