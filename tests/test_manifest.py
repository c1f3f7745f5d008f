from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from orchestra.errors import InvalidInput, InvalidMetadata, TooLarge
from orchestra.manifest import (
    MAX_METADATA_BYTES,
    Manifest,
    Param,
    bind_arguments,
    command_args,
    load_manifest,
    parse_manifest,
)

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "src" / "orchestra" / "metadata.schema.json"
MODULE_FOLDERS = ("examples", "tests/data", "benchmarks")

MINIMAL: dict[str, Any] = {
    "name": "Model",
    "description": "A *model*.",
    "args": [],
    "output": {"type": "timeseries"},
    "install": {"executable": "Model.main", "files": ["Model"]},
}


def doc(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level keys replaced (``install__files=...`` reaches one level down)."""
    data = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        outer, _, inner = key.partition("__")
        if inner:
            data.setdefault(outer, {})[inner] = value
        else:
            data[outer] = value
    return data


def problems_of(data: Any) -> list[str]:
    with pytest.raises(InvalidMetadata) as caught:
        parse_manifest(data)
    assert caught.value.key == "metadata"
    return caught.value.problems


# --- older and newer forms --------------------------------------------------------------------


def test_the_minimal_metadata_is_accepted_with_sensible_defaults() -> None:
    manifest = parse_manifest(doc())
    assert manifest.args == () and manifest.hyperparameters == ()
    assert manifest.defaults == {}
    assert manifest.output_files is None
    assert (manifest.version, manifest.requirements, manifest.python_version) == (None, None, None)
    assert manifest.timeout is None


def test_args_may_be_names_or_typed_pairs() -> None:
    manifest = parse_manifest(doc(args=["start", ["parameter", "str"], ["n", "int"]]))
    assert manifest.args == (Param("start"), Param("parameter", "str"), Param("n", "int"))


def test_hyperparameters_take_the_same_forms() -> None:
    manifest = parse_manifest(doc(hyperparameters=["alpha", ["beta", "float"]]))
    assert manifest.hyperparameters == (Param("alpha"), Param("beta", "float"))
    assert set(manifest.inputs) == {"alpha", "beta", "start", "stop"}


def test_start_and_stop_are_offered_even_when_not_declared() -> None:
    manifest = parse_manifest(doc(args=[["x", "int"]]))
    assert {"start", "stop"} <= set(manifest.inputs)


@pytest.mark.parametrize("defaults", [[], {}, None])
def test_empty_defaults_may_be_a_list_as_in_older_modules(defaults: Any) -> None:
    assert parse_manifest(doc(defaults=defaults)).defaults == {}


@pytest.mark.parametrize(
    ("filename", "expected"),
    [("out.csv", ("out.csv",)), (["a.csv", "plots/b.png"], ("a.csv", "plots/b.png"))],
)
def test_output_filename_may_be_a_name_or_a_list(filename: Any, expected: tuple) -> None:
    manifest = parse_manifest(doc(output={"type": "catalog", "filename": filename}))
    assert (manifest.output_type, manifest.output_files) == ("catalog", expected)


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ("requirements.txt", "requirements.txt"),
        (["numpy>=1.20", "scipy"], ("numpy>=1.20", "scipy")),
    ],
)
def test_requirements_may_be_a_file_or_a_list(requirements: Any, expected: Any) -> None:
    assert parse_manifest(doc(install__requirements=requirements)).requirements == expected


def test_unknown_keys_are_kept_not_refused() -> None:
    data = doc(author="someone", citation={"doi": "10/x"})
    data["install"]["extra"] = True
    manifest = parse_manifest(data)
    assert manifest.raw["author"] == "someone"
    assert manifest.raw["citation"] == {"doi": "10/x"}
    assert manifest.raw["install"]["extra"] is True


def test_a_numeric_version_is_read_as_text() -> None:
    assert parse_manifest(doc(version=2)).version == "2"


def test_python_version_and_timeout_are_read() -> None:
    manifest = parse_manifest(doc(install__python_version="3.10", timeout=90))
    assert (manifest.python_version, manifest.timeout) == ("3.10", 90.0)


# --- mistakes ---------------------------------------------------------------------------------


def test_every_mistake_is_reported_at_once_each_with_its_key() -> None:
    data = {
        "name": 3,
        "args": "start",
        "hyperparameters": [["alpha", "complex"]],
        "defaults": {"ghost": 1},
        "output": {"filename": "../x"},
        "install": {
            "executable": "rm -rf",
            "files": ["/etc/passwd", "ok.py"],
            "requirements": 5,
            "python_version": "three",
        },
        "timeout": -1,
    }
    problems = problems_of(data)
    keys = [
        "name:", "description:", "args:", "hyperparameters[0]:", "defaults.ghost:",
        "output.type:", "output.filename:", "install.executable:", "install.files:",
        "install.requirements:", "install.python_version:", "timeout:",
    ]  # fmt: skip
    for key in keys:
        assert any(problem.startswith(key) for problem in problems), (key, problems)
    assert len(problems) == len(keys)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([], "(top level)"),
        (doc(install="python -m x"), "install:"),
        (doc(install__files=[]), "install.files:"),
        (doc(install__files=["Model", "a/../../b"]), "install.files:"),
        (doc(install__files=["a\\b"]), "install.files:"),
        (doc(args=[["x", "int", "extra"]]), "args[0]:"),
        (doc(args=["bad name"]), "args[0]:"),
        (doc(args=["start\n"]), "args[0]:"),
        (doc(install__executable="Model.main\n"), "install.executable:"),
        (doc(install__python_version="3.8\n"), "install.python_version:"),
        (doc(args=["a"], hyperparameters=["a"]), "args:"),
        (doc(args=[["n", "int"]], defaults={"n": "many"}), "defaults.n:"),
        (doc(name="  "), "name:"),
        (doc(name="a\x07b"), "name:"),
        (doc(timeout=True), "timeout:"),
        (doc(output={"type": "x", "filename": []}), "output.filename:"),
    ],
)
def test_each_mistake_names_its_key(data: Any, key: str) -> None:
    problems = problems_of(data)
    assert problems[0].startswith(key), problems


def test_the_error_lists_every_problem_in_its_message_and_body() -> None:
    with pytest.raises(InvalidMetadata) as caught:
        parse_manifest(doc(name=None, timeout=0))
    body = caught.value.to_dict()
    assert body["problems"] == caught.value.problems
    assert "name:" in caught.value.message and "timeout:" in caught.value.message


def test_a_metadata_file_is_read_from_the_module_folder(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps(doc(name="From file")))
    assert load_manifest(tmp_path).name == "From file"


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "not found"), ("{not json", "not valid JSON"), ("[" * 100_000, "not valid JSON")],
)
def test_a_missing_or_broken_metadata_file_is_invalid(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(InvalidMetadata, match=problem):
        load_manifest(tmp_path)


def test_an_oversized_metadata_file_is_refused_before_parsing(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(" " * (MAX_METADATA_BYTES + 1))
    with pytest.raises(InvalidMetadata, match="larger"):
        load_manifest(tmp_path)


# --- binding run arguments --------------------------------------------------------------------


@pytest.fixture
def model() -> Manifest:
    return parse_manifest(
        doc(
            args=["start", "stop", ["parameter", "str"], "free"],
            hyperparameters=[["n", "int"], ["alpha", "float"], ["verbose", "bool"]],
            defaults={"parameter": "imf_bz", "n": 3, "alpha": 0.5},
        )
    )


def test_defaults_fill_what_the_request_leaves_out(model: Manifest) -> None:
    bound = bind_arguments(model, {"start": "2020-01-01"})
    assert bound == {"start": "2020-01-01", "parameter": "imf_bz", "n": "3", "alpha": "0.5"}


def test_request_values_override_defaults_and_set_hyperparameters(model: Manifest) -> None:
    bound = bind_arguments(model, {"parameter": "bx", "n": "7", "alpha": 2, "verbose": "yes"})
    assert bound == {"parameter": "bx", "n": "7", "alpha": "2.0", "verbose": "true"}


def test_values_are_checked_against_their_declared_types(model: Manifest) -> None:
    with pytest.raises(InvalidInput) as caught:
        bind_arguments(model, {"n": "3.5", "alpha": "fast", "verbose": "maybe", "parameter": 4})
    for name in ("n:", "alpha:", "verbose:", "parameter:"):
        assert name in caught.value.message


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_non_finite_floats_are_refused(model: Manifest, value: str) -> None:
    with pytest.raises(InvalidInput, match="alpha"):
        bind_arguments(model, {"alpha": value})


def test_unknown_names_are_refused_naming_them(model: Manifest) -> None:
    with pytest.raises(InvalidInput, match="'ghost'") as caught:
        bind_arguments(model, {"ghost": "1", "parameter": "bx"})
    assert caught.value.key == "ghost"


def test_start_and_stop_are_accepted_when_not_declared() -> None:
    manifest = parse_manifest(doc(args=[["x", "int"]]))
    bound = bind_arguments(manifest, {"start": "2020-01-01T00:00:00", "stop": "2020-01-02"})
    assert bound == {"start": "2020-01-01T00:00:00", "stop": "2020-01-02"}


def test_shell_metacharacters_are_passed_literally(model: Manifest) -> None:
    nasty = "x; rm -rf / && $(touch y) `id` | cat > z 'q' \"r\" *"
    bound = bind_arguments(model, {"parameter": nasty, "free": "--help"})
    assert bound["parameter"] == nasty
    argv = command_args(model.executable, "/out", bound)
    assert argv[argv.index("--parameter") + 1] == nasty
    assert argv[argv.index("--free") + 1] == "--help"


def test_a_nul_character_is_refused(model: Manifest) -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        bind_arguments(model, {"parameter": "a\x00b"})


def test_an_overlong_value_is_too_large(model: Manifest) -> None:
    with pytest.raises(TooLarge, match="parameter"):
        bind_arguments(model, {"parameter": "x" * 101}, max_length=100)


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2]])
def test_a_structured_value_is_refused(model: Manifest, value: Any) -> None:
    with pytest.raises(InvalidInput, match="free"):
        bind_arguments(model, {"free": value})


def test_the_command_line_follows_the_documented_shape(model: Manifest) -> None:
    argv = command_args("Model.main", "/tmp/out", {"start": "a", "n": "3"})
    assert argv == ["-m", "Model.main", "/tmp/out", "--start", "a", "--n", "3"]


# --- the JSON Schema ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def module_metadata_files() -> list[Path]:
    found: list[Path] = []
    for folder in MODULE_FOLDERS:
        found += sorted((ROOT / folder).rglob("metadata.json"))
    return found


def test_the_repository_holds_example_modules() -> None:
    assert any(path.is_relative_to(ROOT / "examples") for path in module_metadata_files())


def metadata_ids(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize(
    "path",
    [p for p in module_metadata_files() if p.is_relative_to(ROOT / "examples")],
    ids=metadata_ids,
)
def test_every_example_module_is_valid_for_schema_and_parser(path: Path, validator: Any) -> None:
    data = json.loads(path.read_text())
    parse_manifest(data)
    assert list(validator.iter_errors(data)) == []


@pytest.mark.parametrize("path", module_metadata_files(), ids=metadata_ids)
def test_every_module_metadata_the_parser_accepts_matches_the_schema(
    path: Path, validator: Any
) -> None:
    data = json.loads(path.read_text())
    try:
        parse_manifest(data)
    except InvalidMetadata:
        return  # a deliberately broken test module: the schema misses cross-key mistakes
    assert list(validator.iter_errors(data)) == []


VALID = [
    doc(),
    doc(version="1.2.3", args=["start", ["p", "str"]], hyperparameters=[["k", "bool"]]),
    doc(defaults=[], output={"type": "image", "filename": ["a.png", "b/c.png"]}),
    doc(defaults={"start": "2020", "n": 1}, args=[["n", "int"]]),
    doc(install__requirements="reqs/requirements.txt", install__python_version="3.8"),
    doc(install__requirements=["numpy", "scipy<2"], timeout=12.5, anything={"kept": [1]}),
    doc(description="", version=3),
    doc(deterministic=True, install__warm=False),
    doc(install__requirements_file="legacy/requirements.txt", install__requirements=["six"]),
    doc(
        contact="team@example.invalid",
        output={
            "type": "catalog",
            "classmap": {"ICME": 1, "quiet": 0},
            "colormap": {"ICME": [255, 0, 0]},
            "columns": [{"name": "score", "type": "float", "unit": "", "description": "d"}],
        },
    ),  # fmt: skip
    doc(train={"executable": "Model.train"}),
    doc(
        train={
            "executable": "Model.train",
            "args": ["start", "stop"],
            "hyperparameters": [["epochs", "int"]],
            "defaults": {"epochs": 3},
            "timeout": 60,
            "queue": "gpu",
            "network": True,
            "limits": {"memory_mb": 64},
        },
        model={"required": False},
    ),  # fmt: skip
]

INVALID = [
    {},
    doc(name=5),
    doc(name=""),
    doc(description=None),
    doc(args=None),
    doc(args=[["x", "complex"]]),
    doc(args=[["x"]]),
    doc(args=["1abc"]),
    doc(hyperparameters="alpha"),
    doc(defaults="none"),
    doc(defaults=[1]),
    doc(output="timeseries"),
    doc(output={"filename": "a.csv"}),
    doc(output={"type": "x", "filename": "/abs"}),
    doc(output={"type": "x", "filename": []}),
    doc(install={"files": ["Model"]}),
    doc(install__executable="Model/main.py"),
    doc(install__files="Model"),
    doc(install__files=["../Model"]),
    doc(install__files=["Model/.."]),
    doc(install__files=[" "]),
    doc(install__requirements={"numpy": "1"}),
    doc(install__requirements=["numpy", 1]),
    doc(install__python_version=3.8),
    doc(timeout=0),
    doc(timeout="60"),
    doc(version=True),
    doc(deterministic="yes"),
    doc(install__warm=1),
    doc(install__requirements_file="../outside.txt"),
    doc(install__requirements_file=["a.txt"]),
    doc(output={"type": "catalog", "classmap": {"ICME": "one"}}),
    doc(output={"type": "catalog", "classmap": [1]}),
    doc(output={"type": "catalog", "colormap": {"ICME": [255, 0]}}),
    doc(output={"type": "catalog", "colormap": {"ICME": [255, 0, 256]}}),
    doc(output={"type": "catalog", "columns": [{"type": "int"}]}),
    doc(output={"type": "catalog", "columns": [{"name": "n", "type": "complex"}]}),
    doc(train={"args": []}),
    doc(train="Model.train"),
    doc(train={"executable": "Model/train.py"}),
    doc(train={"executable": "M.t", "hyperparameters": [["lr", "decimal"]]}),
    doc(train={"executable": "M.t", "timeout": 0}),
    doc(train={"executable": "M.t", "queue": "no queue"}),
    doc(train={"executable": "M.t", "network": "yes"}),
    doc(train={"executable": "M.t", "limits": {"disk_mb": 1}}),
    doc(model={"required": "yes"}),
    doc(model={"required": True}),
]


def test_train_is_read_with_its_own_inputs_and_model_required_by_default() -> None:
    manifest = parse_manifest(
        doc(
            train={
                "executable": "Model.train",
                "hyperparameters": [["lr", "float"]],
                "defaults": {"lr": 0.1, "start": "2020"},
                "timeout": 30,
            }
        )  # fmt: skip
    )
    assert manifest.train is not None and manifest.model_required
    assert manifest.train.executable == "Model.train" and manifest.train.timeout == 30
    assert set(manifest.train.inputs) == {"lr", "start", "stop"}
    assert manifest.train.defaults == {"lr": 0.1, "start": "2020"}
    assert (manifest.train.queue, manifest.train.network, manifest.train.limits) == (None,) * 3
    plain = parse_manifest(doc())
    assert plain.train is None and not plain.model_required


def test_every_train_mistake_is_named_with_its_key() -> None:
    problems = " | ".join(
        problems_of(
            doc(
                train={
                    "executable": "1x",
                    "args": 3,
                    "defaults": {"q": 1},
                    "timeout": -1,
                    "queue": "!",
                    "network": 1,
                    "limits": {"a": 1},
                },
                model={"required": "y"},
            )  # fmt: skip
        )
    )
    for key in ("train.executable", "train.args", "train.defaults.q", "train.timeout",
                "train.queue", "train.network", "train.limits.a", "model.required"):  # fmt: skip
        assert key + ":" in problems, key


def test_request_option_names_are_refused_at_registration_naming_them(tmp_path: Path) -> None:
    data = doc(args=["model", "fresh"], train={"executable": "M.t", "hyperparameters": ["base"]})
    (tmp_path / "metadata.json").write_text(json.dumps(data))
    parse_manifest(data)  # a stored module is read as it was accepted
    with pytest.raises(InvalidMetadata) as caught:
        load_manifest(tmp_path)
    text = " | ".join(caught.value.problems)
    assert "args: 'model'" in text and "args: 'fresh'" in text
    assert "train.hyperparameters: 'base'" in text


@pytest.mark.parametrize("data", VALID)
def test_schema_and_parser_accept_the_same_valid_documents(data: Any, validator: Any) -> None:
    parse_manifest(data)
    assert list(validator.iter_errors(data)) == []


@pytest.mark.parametrize("data", INVALID)
def test_schema_and_parser_refuse_the_same_invalid_documents(data: Any, validator: Any) -> None:
    problems_of(data)
    assert list(validator.iter_errors(data)) != []
