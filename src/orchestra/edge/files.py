"""Files over HTTP, for the API and the dashboard alike: uploaded archives in, outputs out."""

from __future__ import annotations

import logging
import mimetypes
import uuid
from pathlib import Path, PurePosixPath

from flask import Response, send_file
from werkzeug.datastructures import FileStorage

from orchestra import zipstream
from orchestra.edge import inputs
from orchestra.edge.routing import current_service as service
from orchestra.errors import InvalidInput, NotFound

_LOGGER = logging.getLogger(__name__)


def save_upload(upload: FileStorage, folder: Path) -> Path:
    """Keep an uploaded archive under a fresh name in ``folder``."""
    # the client's file name is never used: it could name anything, anywhere
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}.zip"
    upload.save(target)
    _LOGGER.info("received archive %s (%d bytes)", target.name, target.stat().st_size)
    return target


def task_output(task_id: int) -> Response:
    """The output file itself when there is one, a zip of all of them when there are several."""
    if _wants_votable():
        return _send_votable(*service().task_votable(task_id))
    files = service().task_outputs(task_id)
    if not files:
        raise NotFound(f"task {task_id} wrote no output files")
    if len(files) == 1:
        name, path = files[0]
        return _send(path, name)
    response = Response(zipstream.stream(files), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="task-{task_id}-output.zip"'
    return response


def task_output_file(task_id: int, name: str) -> Response:
    """One output file by its name inside the output folder."""
    if _wants_votable():
        return _send_votable(*service().task_votable(task_id, name))
    return _send(service().task_output_file(task_id, name), name)


def _wants_votable() -> bool:
    """``?format=votable``: a catalog or time table as an IVOA VOTable instead of text."""
    wanted = inputs.query_text("format")
    if wanted is None:
        return False
    if wanted.lower() != "votable":
        raise InvalidInput(f"format: {wanted[:100]!r} is not known (only 'votable')", key="format")
    return True


def _send_votable(download_name: str, data: bytes) -> Response:
    response = Response(data, mimetype="application/x-votable+xml")
    response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return response


def _send(path: Path, name: str) -> Response:
    download_name = PurePosixPath(name).name or path.name
    mimetype = mimetypes.guess_type(download_name)[0] or "application/octet-stream"
    return send_file(
        path, mimetype=mimetype, as_attachment=True, download_name=download_name, max_age=0
    )
