# kvbucket daemon image: the daemon only (no torch, vLLM or LMCache).
#   docker build -t kvbucket .
#   docker run --rm -p 7070:7070 -p 7071:7071 -p 9400:9400 -v kvbucket-data:/data kvbucket --nvme
# (Docker does not run on the development machines of this project: this file is built elsewhere.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    # Large buffers come from the heap, not fresh mmaps: a fresh 32 MiB allocation runs ~6x slower.
    MALLOC_MMAP_THRESHOLD_=1073741824 \
    MALLOC_TRIM_THRESHOLD_=4294967296 \
    KVBUCKET_HOST=0.0.0.0 \
    # The fast wire on a fixed port, so it can be published next to gRPC's.
    KVBUCKET_FAST__PORT=7071 \
    KVBUCKET_METRICS_HOST=0.0.0.0 \
    KVBUCKET_DATA_DIR=/data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY __init__.py py.typed ./
COPY core ./core
COPY proto ./proto
COPY server ./server
COPY clients ./clients
COPY cuda ./cuda
RUN pip install . && useradd --system --home /data kvbucket && mkdir -p /data && chown kvbucket /data

USER kvbucket
WORKDIR /data
EXPOSE 7070 7071 9400
HEALTHCHECK CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
g.HealthStub(grpc.insecure_channel('127.0.0.1:7070')).Check(h.HealthCheckRequest(), timeout=2)" || exit 1
ENTRYPOINT ["kvbucket", "serve"]
