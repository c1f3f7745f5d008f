# The image docker-compose.yml runs: Orchestra with its distributed extra, git for sources,
# bubblewrap for the task sandbox where the container lets it make its namespaces (Docker's
# defaults do not: see the README, "Running on several machines").
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git bubblewrap \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[distributed]'
WORKDIR /data
