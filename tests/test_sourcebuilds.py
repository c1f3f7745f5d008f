"""Source-only requirements from an index, registered with the sandbox required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestra.config import Settings, load_settings
from orchestra.executors import sandbox
from orchestra.service import Service
from tests.support.helpers import write_module
from tests.support.postgres import require_service
from tests.support.pypi import PackageIndex, backend_files

STATE = sandbox.detect("auto")
C_SOURCE = """
#include <Python.h>
static PyObject *twice(PyObject *self, PyObject *arg) {
    return PyLong_FromLong(2 * PyLong_AsLong(arg));
}
static PyMethodDef methods[] = {{"twice", twice, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastcalc", NULL, -1, methods};
PyMODINIT_FUNC PyInit_fastcalc(void) { return PyModule_Create(&module); }
"""
USES_BOTH = """
import fastcalc, plainparse
(out / "result.json").write_text(json.dumps([fastcalc.twice(21), plainparse.WORD]))
"""


@pytest.fixture
def index(package_index: PackageIndex) -> PackageIndex:
    """An index holding a pure-Python package and a C extension, as source archives only."""
    package_index.add_sdist(
        "plainparse",
        "1.0",
        backend_files("plainparse", "1.0", {"plainparse.py": "WORD = 'plain'\n"}),
    )
    package_index.add_sdist(
        "fastcalc", "1.0", backend_files("fastcalc", "1.0", {"fastcalc.c": C_SOURCE})
    )
    return package_index


@pytest.fixture
def settings(tmp_path: Path, uv_cache: Path, index: PackageIndex) -> Settings:
    """The sandbox required, requirements from the loopback index."""
    if not STATE.active:
        require_service("the task sandbox", STATE.detail)
    return load_settings(
        {"home": tmp_path / "home", "uv_cache": str(uv_cache), "sandbox": "required",
         "index_url": index.url + "/simple", "max_running": 2},
        environ={},
    )  # fmt: skip


def needing(folder: Path, requirements: list[str], name: str = "Uses both") -> Path:
    """A module whose task imports both packages; ``requirements`` in its metadata."""
    write_module(folder, name=name, code="import json\n" + USES_BOTH)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["install"]["requirements"] = requirements
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_source_only_packages_register_in_the_sandbox(service: Service, tmp_path: Path) -> None:
    module = service.register(str(needing(tmp_path / "m", ["plainparse", "fastcalc==1.0"])))
    assert module.status == "installed"
    assert "built in the sandbox: fastcalc-1.0-cp3" in module.install_log
    assert sorted(module.lock["packages"]) == ["fastcalc==1.0", "plainparse==1.0"]
