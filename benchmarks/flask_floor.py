"""The least a Flask app on waitress costs per request: a constant JSON answer, a small upload.

Run as ``python flask_floor.py PORT`` (the throughput benchmark does); it serves until killed.
"""

from __future__ import annotations

import sys

from flask import Flask, request
from waitress import serve

app = Flask(__name__)


@app.get("/task/<int:task_id>")
def task(task_id: int) -> dict[str, object]:
    return {"id": task_id, "status": "done"}


@app.put("/task/<int:task_id>/output/<path:name>")
def output(task_id: int, name: str) -> tuple[dict[str, object], int]:
    return {"name": name, "size": len(request.stream.read())}, 201


if __name__ == "__main__":
    serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=16)
