"""Source-only requirements from an index, registered with the sandbox required.

The index is a real one on loopback (``tests/support/pypi.py``) holding source archives
only: uv must build them, in the sandbox, and the environment then installs the wheels.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestra.config import Settings, load_settings
from orchestra.errors import InstallError
from orchestra.executors import sandbox
from orchestra.service import Service
from orchestra.storage.files import TaskFolder
from tests.support.cluster import Cluster
from tests.support.helpers import run_cli, wait_for, write_module
from tests.support.netns import Network, require_namespaces
from tests.support.postgres import PostgresServer, require_service
from tests.support.pypi import PackageIndex, backend_files, serving
from tests.support.redis import RedisServer, redis_program
from tests.test_resolve_as_of import OLD, publish_dated

if TYPE_CHECKING:
    from flask.testing import FlaskClient

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
BROKEN_C = "#include <Python.h>\nthis line is not C at all;\n"
USES_BOTH = """
import json, fastcalc, plainparse
(out / "result.json").write_text(json.dumps([fastcalc.twice(21), plainparse.WORD]))
"""


def publish_both(index: PackageIndex, uploaded: datetime | None = None) -> None:
    """A pure-Python package and a C extension, both as source archives only."""
    plain = {"plainparse.py": "WORD = 'plain'\n"}
    index.add_sdist("plainparse", "1.0", backend_files("plainparse", "1.0", plain), uploaded)
    calc = {"fastcalc.c": C_SOURCE}
    index.add_sdist("fastcalc", "1.0", backend_files("fastcalc", "1.0", calc), uploaded)


@pytest.fixture
def index(package_index: PackageIndex) -> PackageIndex:
    """The loopback index with both packages."""
    publish_both(package_index)
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
    write_module(folder, name=name, code=USES_BOTH)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["install"]["requirements"] = requirements
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def ran_both(service: Service, module_id: int) -> None:
    """Run the module once: its task imported both packages and used the C one."""
    task = service.get_task(service.run(module_id, {}).id, wait=60)
    assert task.status == "done", task.error
    result = TaskFolder(service.settings.tasks_dir, task.id).output / "result.json"
    assert json.loads(result.read_text()) == [42, "plain"]


def test_source_only_packages_register_from_the_command_line_and_run(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    module = needing(tmp_path / "m", ["plainparse", "fastcalc==1.0"])
    code, out, err = run_cli(["register", str(module)], settings)
    assert code == 0, err
    module_id = int(out.split("registered module ")[1].split()[0])
    info = service.get_module(module_id)
    assert "built in the sandbox: fastcalc-1.0-cp3" in info.install_log
    assert "plainparse-1.0-py3-none-any.whl" in info.install_log
    assert sorted(info.lock["packages"]) == ["fastcalc==1.0", "plainparse==1.0"]  # type: ignore[index]
    ran_both(service, module_id)


def test_source_only_packages_register_over_rest_and_run(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module = needing(tmp_path / "m", ["plainparse", "fastcalc"])
    answer = client.post("/modules", json={"source": str(module)})
    assert answer.status_code == 202, answer.get_json()
    module_id = answer.get_json()["id"]
    record = wait_for(
        lambda: client.get(f"/module/{module_id}").get_json(),
        lambda m: m["status"] != "installing", timeout=180, what="the installation",
    )  # fmt: skip
    assert record["status"] == "installed", record["error"]
    ran_both(service, module_id)


def test_a_failing_build_names_the_package_and_shows_its_own_last_lines(
    service: Service, index: PackageIndex, tmp_path: Path
) -> None:
    index.add_sdist("brokenc", "2.0", backend_files("brokenc", "2.0", {"brokenc.c": BROKEN_C}))
    with pytest.raises(InstallError) as raised:
        service.register(str(needing(tmp_path / "m", ["plainparse", "brokenc"])))
    message = raised.value.message
    assert "building brokenc==2.0 from its source failed" in message, message
    assert "unknown type name" in message, message  # the compiler's own words
    assert "--no-build" not in message and "hint:" not in message, message
    assert service.list_modules(everything=True) == []


@pytest.mark.slow
def test_a_worker_builds_the_source_packages_in_its_sandbox_as_of_the_registration(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> None:
    """Workers install the lock: source archives built in their sandbox, the same as_of."""
    if not STATE.active:
        require_service("the task sandbox", STATE.detail)
    require_namespaces()
    root = tmp_path_factory.mktemp("cluster")
    network = Network()
    redis = RedisServer(redis_program(), root / "redis", bind=("127.0.0.1", network.host_address))
    redis.start()
    cluster = Cluster(root, network, redis, postgres_server)
    try:
        # the workers reach the index over the bridge, as another machine would
        with serving(root / "index", network.host_address) as index:
            publish_both(index, OLD)
            publish_dated(index)
            cluster.base_env.update(ORCHESTRA_SANDBOX="required",
                                    ORCHESTRA_INDEX_URL=index.url + "/simple")  # fmt: skip
            cluster.start_api()
            folder = needing(root / "m", ["plainparse", "fastcalc", "dated"])
            answer = cluster.call(
                "POST", "/modules", {"source": str(folder), "as_of": "2022-06-01"}
            )
            assert answer.status == 202, answer.body
            module_id = int(answer.json()["id"])
            record = wait_for(
                lambda: cluster.call("GET", f"/module/{module_id}").json(),
                lambda m: m["status"] != "installing", timeout=180, what="the installation",
            )  # fmt: skip
            assert record["status"] == "installed", record["error"]
            assert "dated==1.0" in record["lock"]["packages"]
            worker = cluster.add_worker()
            task = cluster.wait_status(cluster.run(module_id), {"done", "error"}, timeout=180)
            assert task["status"] == "done", (task["error"], worker.text())
            answer = cluster.call("GET", f"/task/{task['id']}/output/result.json")
            assert json.loads(answer.body) == [42, "plain"]
            built = next((worker.home / "installs").glob("*/install.log")).read_text()
            assert "built in the sandbox: " in built and "--exclude-newer" in built, built
            assert "2022-06-01T23:59:59Z" in built, built
    finally:
        cluster.close()
        redis.stop()
        network.close()
