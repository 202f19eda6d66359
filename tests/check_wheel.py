"""Build the wheel and check that it installs the Twisted plugin the way Twisted needs it.

``twist pypicloud`` finds the server through ``twisted/plugins/pypicloud_tx_plugin.py``.  That
file must be in the wheel, and the wheel must not ship ``twisted/__init__.py`` or
``twisted/plugins/__init__.py``: installed, either would shadow Twisted's own package.

Usage::

    python tests/check_wheel.py              # build from this checkout, then check
    python tests/check_wheel.py dist/X.whl   # check a wheel built already

The build runs on a copy of the checkout, so stale ``build/`` output cannot hide a problem.
Exits 0 when the wheel is right, 1 (with the reasons) when it is not.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = (
    "twisted/plugins/pypicloud_tx_plugin.py",
    "pypicloud_tx/__init__.py",
    "pypicloud_tx/py.typed",
)
FORBIDDEN = (
    "twisted/__init__.py",
    "twisted/plugins/__init__.py",
    "twisted/plugins/dropin.cache",
)
# Left out of the copy that is built: at the top, environments, caches, earlier build output
# and local data; anywhere, byte code and generated metadata.
TOP_LEVEL_SKIPPED = {".git", ".venv", ".tox", "build", "dist", "packages", ".services"}
SKIPPED_PATTERNS = ("__pycache__", "*.egg-info", "_trial_temp*", ".*_cache", "dropin.cache")


def _not_copied(directory: str, names: list[str]) -> set[str]:
    """For :func:`shutil.copytree`: the entries of ``directory`` to leave out."""
    skipped = {n for n in names if any(fnmatch(n, p) for p in SKIPPED_PATTERNS)}
    if Path(directory) == ROOT:
        skipped |= {n for n in names if n in TOP_LEVEL_SKIPPED or n.startswith("db.sqlite")}
    return skipped


def build_wheel(source: Path, out: Path) -> Path:
    """Build the project's wheel from a clean copy of ``source`` into ``out``; return its path.

    :raises subprocess.CalledProcessError: when pip cannot build the wheel.
    """
    copy = out / "src"
    shutil.copytree(source, copy, ignore=_not_copied, symlinks=True)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    command += ["--disable-pip-version-check", "--wheel-dir", str(out), str(copy)]
    subprocess.run(command, check=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def problems(wheel: Path) -> list[str]:
    """What is wrong with ``wheel``'s contents; empty when it is right."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    found = [f"missing {name}" for name in REQUIRED if name not in names]
    found += [f"must not contain {name}" for name in FORBIDDEN if name in names]
    return found


def main(argv: list[str]) -> int:
    """Check the wheel named in ``argv`` or, without one, a freshly built one."""
    with tempfile.TemporaryDirectory(prefix="ppc-wheel-") as scratch:
        if argv:
            wheel = Path(argv[0])
        else:
            try:
                wheel = build_wheel(ROOT, Path(scratch))
            except subprocess.CalledProcessError as error:
                print(f"check_wheel: building the wheel failed ({error})", file=sys.stderr)
                return 1
        found = problems(wheel)
        for problem in found:
            print(f"check_wheel: {wheel.name}: {problem}", file=sys.stderr)
        if not found:
            print(f"check_wheel: {wheel.name}: plugin present, no twisted/__init__.py: OK")
        return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
