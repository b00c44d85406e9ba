# One image for every Switchyard process: the API (gunicorn), the scheduler, the Celery workers,
# `switchyard db upgrade` and Flower. compose.yaml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# pyproject.toml names README.md as the package's readme, so the build needs it too.
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY api ./api
COPY switchyard ./switchyard
# flower: the `flower` service; otel: OpenTelemetry traces, off until OTEL_TRACES_EXPORTER is set
# (orchestrator/tracing.py), so every process of the image can export them without a rebuild.
RUN pip install '.[flower,otel]'

# Run as an unprivileged user. SWITCHYARD_DATA_DIR holds the embedded defaults (SQLite file,
# filesystem broker) and the output files (artifacts/, a volume the API and workers share in
# compose.yaml); point it at a directory that user may write.
RUN useradd --create-home --uid 10001 --user-group switchyard \
    && install -d -o switchyard -g switchyard /var/lib/switchyard /var/lib/switchyard/artifacts
ENV SWITCHYARD_DATA_DIR=/var/lib/switchyard
USER switchyard

EXPOSE 8080
CMD ["switchyard", "api", "--host", "0.0.0.0", "--port", "8080"]
