# The image docker-compose.yml runs: Orchestra with its distributed and amda extras (workers
# and the API; VOTable outputs), git for sources, bubblewrap for the task sandbox where the
# container lets it make its namespaces (Docker's defaults do not: docs/several-machines.md).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git bubblewrap \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[distributed,amda]'
# an unprivileged user runs Orchestra and the modules; /data, its data folder, is its own
# (a named volume mounted there starts with this owner)
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home orchestra
USER orchestra
WORKDIR /data
