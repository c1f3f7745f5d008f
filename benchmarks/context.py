"""What every benchmark receives: options, a scratch folder, the shared caches and the report."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from classic import ClassicPool
from harness import LIGHT_REQUIREMENT, Report, prepare_module
from live import cli, orchestra_env, wait_background_compile

_LOGGER = logging.getLogger(__name__)


def find_uv() -> str:
    """The uv that Orchestra itself uses (installed beside its interpreter)."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv") or "uv"


@dataclass
class Context:
    """Options and shared state for one run of the suite."""

    quick: bool
    reps_override: int | None
    workdir: Path
    report: Report = field(default_factory=Report)
    uv: str = field(default_factory=find_uv)
    _serial: int = 0
    _cache_warm: bool = False

    def __post_init__(self) -> None:
        self.uv_cache = self.workdir / "uv-cache"
        self.pool = ClassicPool(self.workdir / "classic", light=self.quick)
        # what the "heavy" modules need: numpy and pandas, or one small package in --quick
        self.heavy = f"{LIGHT_REQUIREMENT} (--quick)" if self.quick else "numpy+pandas"

    def reps(self, full: int, quick: int) -> int:
        """Repetitions: ``--reps`` if given, else the full or quick default."""
        if self.reps_override:
            return self.reps_override
        return quick if self.quick else full

    def count(self, full: int, quick: int) -> int:
        """A size (tasks, modules) for full or quick mode."""
        return quick if self.quick else full

    def folder(self, name: str) -> Path:
        """A new, empty folder under the scratch folder."""
        self._serial += 1
        path = self.workdir / f"{name}-{self._serial}"
        path.mkdir(parents=True)
        return path

    def prepare(self, kind: str, dest: Path, *, suffix: str = "") -> Path:
        """Copy a benchmark module to ``dest`` (light requirements in --quick)."""
        return prepare_module(kind, dest, suffix=suffix, light=self.quick)

    def log(self, message: str) -> None:
        """Progress on standard error, with a time stamp."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def warm_uv_cache(self) -> None:
        """Fill the shared installer cache once, by an untimed registration."""
        if self._cache_warm:
            return
        self.log("warming the installer cache (untimed registration)")
        scratch = self.folder("warm")
        module = self.prepare("pandas_model", scratch / "module")
        cli("--register", str(module), env=orchestra_env(scratch / "home", self.uv_cache))
        wait_background_compile(scratch / "home")
        self._cache_warm = True
