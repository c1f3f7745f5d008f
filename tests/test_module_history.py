"""Staged modules, updates through the API, removal that keeps history, pruning."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from orchestra.storage.tables import TaskRow
from orchestra.tasks.lifecycle import now
from tests.support.helpers import (
    FINAL_MODULE,
    FINAL_TASK,
    run_cli,
    wait_for,
    wait_for_status,
    write_module,
    zipped,
)

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from orchestra.config import Settings
    from orchestra.service import Service


def _module(folder: Path, *, name: str = "history", says: str = "one", **extra: Any) -> Path:
    write_module(folder, name=name, code=f"(out / 'said.txt').write_text({says!r})")
    if extra:
        metadata = json.loads((folder / "metadata.json").read_text())
        (folder / "metadata.json").write_text(json.dumps({**metadata, **extra}))
    return folder


def _module_now(client: FlaskClient, module_id: int) -> dict[str, Any]:
    return client.get(f"/module/{module_id}").json  # type: ignore[no-any-return]


def _settled(client: FlaskClient, module_id: int) -> dict[str, Any]:
    return wait_for_status(lambda: _module_now(client, module_id), FINAL_MODULE, timeout=120)


def _ran(client: FlaskClient, module_id: int) -> dict[str, Any]:
    task_id = client.post(f"/module/{module_id}/run").json["task"]
    return wait_for_status(lambda: client.get(f"/task/{task_id}?wait=5").json, FINAL_TASK)


def _listed(client: FlaskClient, query: str = "") -> dict[int, dict[str, Any]]:
    return {m["id"]: m for m in client.get(f"/modules{query}").json}


# -- staging ---------------------------------------------------------------------------------


def test_a_staged_module_is_hidden_until_published_through_the_api(
    client: FlaskClient, tmp_path: Path
) -> None:
    answer = client.post("/modules", json={"source": str(_module(tmp_path / "m")), "staged": True})
    assert answer.status_code == 202
    module_id = answer.json["id"]
    assert _settled(client, module_id)["status"] == "installed"
    assert module_id not in _listed(client)
    assert _listed(client, "?all=1")[module_id]["staged"] is True
    assert _ran(client, module_id)["status"] == "done"  # operators can try it before publishing
    published = client.post(f"/module/{module_id}/publish")
    assert published.status_code == 200 and published.json["staged"] is False
    assert _listed(client)[module_id]["staged"] is False
    assert client.post(f"/modules/{module_id}/stage").json["staged"] is True
    assert module_id not in _listed(client)
    assert client.post("/module/999/publish").status_code == 404
    bad = client.post("/modules", json={"source": str(tmp_path / "m"), "staged": "maybe"})
    assert bad.status_code == 400 and "staged" in bad.json["error"]


def test_staging_from_the_command_line(settings: Settings, tmp_path: Path) -> None:
    folder = str(_module(tmp_path / "m"))
    assert run_cli(["register", "--staged", folder], settings)[0] == 0
    code, _, err = run_cli(["register", "--skip-existing", folder], settings)
    assert code == 0 and "already installed" in err  # a staged module's name is taken
    code, out, _ = run_cli(["list"], settings)
    assert code == 0 and "installed (staged)" in out
    assert json.loads(run_cli(["--json", "publish", "1"], settings)[1])["staged"] is False
    assert "(staged)" not in run_cli(["list"], settings)[1]
    code, out, _ = run_cli(["stage", "1"], settings)
    assert (code, out) == (0, f"staged module 1 in {settings.home} (SQLite): history\n")
    listed = json.loads(run_cli(["--json", "list"], settings)[1])
    assert [(m["id"], m["staged"]) for m in listed] == [(1, True)]
    assert run_cli(["publish", "7"], settings)[0] != 0


# -- updates ---------------------------------------------------------------------------------


def test_an_update_from_a_new_zip_serves_the_old_version_until_installed(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module_id = service.register(str(_module(tmp_path / "v1", says="one"))).id
    new = zipped(_module(tmp_path / "v2", says="two", version="2"))
    answer = client.post(
        f"/module/{module_id}/update",
        data={"file": (io.BytesIO(new), "v2.zip")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.json
    assert answer.headers["Location"].endswith(f"/module/{module_id}")
    assert answer.json["status"] == "installed"  # the old version serves meanwhile
    wait_for(
        lambda: _module_now(client, module_id),
        lambda m: m["version"] == "2",
        timeout=120,
        what="the update",
    )
    module = _module_now(client, module_id)
    assert module["source"].startswith("upload:") and module["error"] is None
    task = _ran(client, module_id)
    assert client.get(f"/task/{task['id']}/output").data == b"two"


def test_a_module_whose_install_failed_is_recovered_by_an_update_through_the_api(
    client: FlaskClient, tmp_path: Path
) -> None:
    broken = _module(tmp_path / "broken")
    metadata = json.loads((broken / "metadata.json").read_text())
    metadata["install"]["files"] = ["tinymod", "missing.py"]
    (broken / "metadata.json").write_text(json.dumps(metadata))
    answer = client.post(
        "/modules",
        data={"file": (io.BytesIO(zipped(broken)), "broken.zip")},
        content_type="multipart/form-data",
    )
    module_id = answer.json["id"]
    failed = _settled(client, module_id)
    assert failed["status"] == "error" and "missing.py" in failed["error"]
    assert client.post(f"/module/{module_id}/run").status_code == 409
    fixed = zipped(_module(tmp_path / "fixed", says="fixed"))
    answer = client.post(
        f"/module/{module_id}/update",
        data={"file": (io.BytesIO(fixed), "fixed.zip")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202 and answer.json["status"] == "installing"
    recovered = _settled(client, module_id)
    assert recovered["status"] == "installed" and recovered["error"] is None
    assert client.get(f"/task/{_ran(client, module_id)['id']}/output").data == b"fixed"


def test_an_update_from_the_recorded_source_and_its_refusals(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    folder = _module(tmp_path / "m", says="one")
    module_id = service.register(str(folder)).id
    _module(tmp_path / "again", says="one", version="3")
    (folder / "metadata.json").write_text((tmp_path / "again" / "metadata.json").read_text())
    assert client.post(f"/module/{module_id}/update").status_code == 202
    wait_for(
        lambda: _module_now(client, module_id), lambda m: m["version"] == "3", timeout=120,
        what="the update",
    )  # fmt: skip
    assert client.post(f"/module/{module_id}/update", json={"colour": 1}).status_code == 400
    assert client.post("/module/999/update").status_code == 404


# -- removal and history ---------------------------------------------------------------------


def test_removing_a_module_keeps_its_tasks_and_outputs_by_name(
    client: FlaskClient, service: Service, tmp_path: Path
) -> None:
    module_id = service.register(str(_module(tmp_path / "m", name="kept"))).id
    task = _ran(client, module_id)
    assert client.delete(f"/module/{module_id}").status_code == 204
    assert module_id not in _listed(client)
    assert _listed(client, "?all=1")[module_id]["status"] == "removed"
    shown = client.get(f"/task/{task['id']}").json
    assert (shown["module"], shown["module_name"], shown["module_status"]) == (
        module_id, "kept", "removed",
    )  # fmt: skip
    assert client.get(f"/task/{task['id']}/output").data == b"one"
    assert client.post(f"/module/{module_id}/run").status_code == 409
    again = service.register(str(_module(tmp_path / "again", name="kept")))  # the name is free
    assert again.id != module_id and again.status == "installed"
    assert client.delete(f"/module/{module_id}?purge=1").status_code == 204
    assert client.get(f"/task/{task['id']}").status_code == 404
    assert client.get(f"/module/{module_id}").status_code == 404
    assert not (service.settings.tasks_dir / str(task["id"])).exists()


def test_removing_with_purge_forgets_the_tasks_from_the_command_line(
    settings: Settings, tmp_path: Path
) -> None:
    run_cli(["register", str(_module(tmp_path / "m"))], settings)
    assert run_cli(["run", "1", "--wait"], settings)[0] == 0
    assert (
        run_cli(["remove", "1"], settings)[1] == f"removed module 1 from {settings.home} (SQLite)\n"
    )
    code, out, _ = run_cli(["task", "1"], settings)
    assert code == 0 and "module:    1 (history, removed)" in out
    assert run_cli(["remove", "1", "--purge"], settings)[0] == 0
    assert run_cli(["task", "1"], settings)[0] != 0
    assert json.loads(run_cli(["--json", "list"], settings)[1]) == []


def _age(service: Service, task_id: int, days: float) -> None:
    with service.db.write() as session:
        when = now() - timedelta(days=days)
        session.execute(update(TaskRow).where(TaskRow.id == task_id).values(finished=when))


def test_prune_forgets_old_tasks_and_then_their_removed_module(
    client: FlaskClient, service: Service, settings: Settings, tmp_path: Path
) -> None:
    module_id = service.register(str(_module(tmp_path / "m"))).id
    old, recent = _ran(client, module_id), _ran(client, module_id)
    _age(service, old["id"], 10)
    service.remove(module_id)
    code, out, _ = run_cli(["prune", "--older-than", "5"], settings)
    where = f"{settings.home} (SQLite)"
    assert (code, out) == (0, f"forgot 1 task(s) ended more than 5 day(s) ago in {where}\n")
    assert client.get(f"/task/{old['id']}").status_code == 404
    assert not (settings.tasks_dir / str(old["id"])).exists()
    assert client.get(f"/task/{recent['id']}").status_code == 200
    _age(service, recent["id"], 6)
    pruned = client.post("/tasks/prune?older_than=5").json
    assert pruned == {"tasks": 1, "modules": 1, "older_than_days": 5.0}
    assert client.get(f"/module/{module_id}").status_code == 404
    assert client.post("/tasks/prune?older_than=soon").status_code == 400
    assert run_cli(["prune"], settings)[0] != 0  # no retention set, no --older-than


def test_a_server_with_a_retention_setting_prunes_by_itself(
    settings: Settings, tmp_path: Path
) -> None:
    from orchestra.service import Service

    keeping = settings.with_overrides(task_retention_days=3)
    first = Service(keeping)
    try:
        module_id = first.register(str(_module(tmp_path / "m"))).id
        task = first.get_task(first.run(module_id, {}).id, wait=60)
        _age(first, task.id, 4)
    finally:
        first.close()
    server = Service(keeping)
    server.start()
    try:
        wait_for(
            lambda: server.list_tasks().total, lambda total: total == 0, timeout=60,
            what="the retention pass",
        )  # fmt: skip
    finally:
        server.close()
    assert not (keeping.tasks_dir / str(task.id)).exists()
