"""Which Python runs each backend, and how a child process of another environment finds this package.

MXNet and JAX can never share an environment, so commands that span backends
(``compare``, a ``convert`` step whose framework is not here) start each
backend's own interpreter. First match wins:

1. ``--python BACKEND=PATH`` on the command line;
2. the environment variable ``RESNET_MULTI_PYTHON_<BACKEND>`` (e.g. RESNET_MULTI_PYTHON_TORCH);
3. ``.nox/<backend>/bin/python`` in the project folder (what ``nox`` builds);
4. this interpreter, if it can import the framework.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from resnet_multi import faces
from resnet_multi.errors import UserError


def project_root() -> Path:
    """The checkout this package runs from (where noxfile.py is), else the working folder."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "noxfile.py").exists() else Path.cwd()


def find_python(backend: str, overrides: dict[str, str]) -> tuple[str | None, str]:
    """The interpreter for a backend and where that choice came from (or None and what to do)."""
    if backend in overrides:
        return _usable(overrides[backend], "--python", f"--python {backend}=")
    var = f"RESNET_MULTI_PYTHON_{backend.upper()}"
    if os.environ.get(var):
        return _usable(os.environ[var], var, f"{var}=")
    nox_python = project_root() / ".nox" / backend / "bin" / "python"
    if nox_python.exists():
        return str(nox_python), "nox"
    if faces.importable(backend):
        return sys.executable, "this interpreter"
    return None, (f"no environment found: run 'nox -s {backend} --install-only', set {var}, "
                  f"or pass --python {backend}=PATH")


def _usable(path: str, source: str, shown: str) -> tuple[str | None, str]:
    """``(path, source)`` when ``path`` can be started, else ``(None, why not)``: checked before any process starts."""
    # A bare name (python3) is looked up on PATH, as subprocess would.
    found = shutil.which(path) if os.sep not in path else path
    where = f"{shown}{path}"
    if found is None or not os.path.exists(found):
        return None, f"interpreter {where} does not exist"
    if os.path.isdir(found):
        return None, f"interpreter {where} is a directory, not a Python executable"
    if not os.access(found, os.X_OK):
        return None, f"interpreter {where} is not executable"
    return found, source


def parse_python_overrides(items: list[str]) -> dict[str, str]:
    """['torch=/venv/bin/python', ...] -> {'torch': '/venv/bin/python'}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--python expects BACKEND=PATH, got {item!r}")
        name, path = item.split("=", 1)
        if not path:
            raise UserError(f"--python expects BACKEND=PATH, got {item!r} (no path)")
        out[faces.canonical_name(name)] = path
    return out


def child_env() -> dict[str, str]:
    """This process's environment, with this package's checkout first on PYTHONPATH for the child."""
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
