"""The classic way: ``python -m venv X && X/bin/pip install -r requirements.txt``."""

from __future__ import annotations

import logging
from pathlib import Path

from harness import BASE_PYTHON, BenchError, prepare_module, run, timed, user_env

_LOGGER = logging.getLogger(__name__)


def build_venv(venv: Path, requirements: Path, *, no_cache: bool = False) -> float:
    """Build a classic environment as a user would (pip's own config in force); seconds."""
    python = BASE_PYTHON
    pip_args = ["--no-cache-dir"] if no_cache else []
    env = user_env()

    def work() -> None:
        run([python, "-m", "venv", str(venv)], env=env)
        pip = str(venv / "bin" / "pip")
        run([pip, "install", *pip_args, "-r", str(requirements)], env=env)

    return timed(work)


class ClassicPool:
    """Classic environments with the pandas requirements, shared between benchmarks.

    Building one takes ~20 s, so an environment built (and timed) by one benchmark serves
    the others: the disk benchmark counts them, the first-run benchmark runs one that has
    never run a program.
    """

    def __init__(self, root: Path, *, light: bool = False) -> None:
        self.root = root
        module = prepare_module("pandas_model", root / "module", light=light)
        self.requirements = module / "requirements.txt"
        self._venvs: list[Path] = []
        self._used: set[Path] = set()
        self._made = 0

    def new_path(self) -> Path:
        """A fresh path for an environment that ``adopt`` will receive."""
        self._made += 1
        return self.root / f"venv-{self._made}"

    def adopt(self, venv: Path) -> None:
        """Keep an environment a benchmark built with the pool's requirements."""
        if not (venv / "bin" / "python").exists():
            raise BenchError(f"{venv} is not an environment")
        self._venvs.append(venv)

    def take(self, count: int) -> list[Path]:
        """``count`` environments, building the missing ones (untimed)."""
        while len(self._venvs) < count:
            venv = self.new_path()
            _LOGGER.info("building classic environment %s", venv.name)
            build_venv(venv, self.requirements)
            self.adopt(venv)
        return self._venvs[:count]

    def take_unused(self) -> Path:
        """An environment in which no program has run yet."""
        for venv in self._venvs:
            if venv not in self._used:
                self._used.add(venv)
                return venv
        venv = self.take(len(self._venvs) + 1)[-1]
        self._used.add(venv)
        return venv
