"""Build the sdist and the wheel, install the wheel as a user would, and run it from outside the checkout.

    python tests/packaging/smoke.py            # what `nox -s wheel` runs (needs `build` installed)
    python tests/packaging/smoke.py --keep     # keep the temporary folder (dist/, venv/) for a look

Fails (exit 1, one line per problem) when:

- the sdist lacks the package, README.md, LICENSE, CHANGELOG.md or pyproject.toml;
- the sdist or the wheel lacks any file of the source tree's package (every .py and every
  other file under resnet_multi/, __pycache__ aside), or carries one the tree does not have;
- the wheel's metadata has another name or version than resnet_multi/__init__.py, no license,
  no console script, or a description without this version's CHANGELOG.md section;
- README.md's install-from-a-wheel lines name another version's wheel;
- in a fresh virtual environment with no framework, outside the source tree, the installed
  `resnet-multi` does not print its version, list the zoo, give resnet50's summary as JSON, or
  give the one-line install hint for a missing backend.

Only the package index is needed (build isolation fetches setuptools; the venv gets numpy and
safetensors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "resnet_multi"
DIST_NAME = "resnet_multi"  # the normalized name in file names: resnet_multi-0.2.0-py3-none-any.whl
SDIST_EXTRAS = ("README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml")
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "flax", "mxnet")
RESNET50_PARAMS = 25_557_032

problems: list[str] = []


def check(ok: bool, message: str) -> bool:
    if not ok:
        problems.append(message)
    return ok


def step(message: str) -> None:
    print(f"[wheel] {message}", flush=True)


def source_version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if not match:
        sys.exit(f"no __version__ = \"...\" line in {PACKAGE}/__init__.py")
    return match.group(1)


def source_files() -> set[str]:
    """Every file of the package in the source tree, as a path relative to the root (a/b.py)."""
    out = set()
    for path in (ROOT / PACKAGE).rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo"):
            out.add(rel.as_posix())
    return out


def compare(what: str, shipped: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - shipped), sorted(shipped - expected)
    check(not missing, f"{what} lacks {len(missing)} file(s) of the source tree: {', '.join(missing)}")
    check(not extra, f"{what} has {len(extra)} file(s) the source tree does not: {', '.join(extra)}")


def build(out: Path) -> tuple[Path, Path]:
    step("python -m build (the sdist, then the wheel from the unpacked sdist)")
    # From a clean copy of what a fresh clone would build from: the top-level files and the package,
    # without build leftovers (a stale resnet_multi.egg-info/SOURCES.txt or build/lib can put files
    # into a distribution that the configuration itself would leave out).
    src = out / "src"
    src.mkdir()
    for path in ROOT.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, src / path.name)
    shutil.copytree(ROOT / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    dist = out / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], check=True,
                   stdout=subprocess.DEVNULL)
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        sys.exit(f"expected one sdist and one wheel in {dist}, found {[p.name for p in dist.iterdir()]}")
    return sdists[0], wheels[0]


def check_sdist(sdist: Path, version: str, expected: set[str]) -> None:
    step(f"sdist {sdist.name}")
    prefix = f"{DIST_NAME}-{version}/"
    check(sdist.name == f"{DIST_NAME}-{version}.tar.gz", f"sdist is named {sdist.name}, expected version {version}")
    with tarfile.open(sdist) as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
    for name in SDIST_EXTRAS:
        check(prefix + name in names, f"sdist lacks {name}")
    shipped = {n[len(prefix):] for n in names if n.startswith(prefix + PACKAGE + "/")}
    compare("sdist", shipped, expected)


def check_wheel(wheel: Path, version: str, expected: set[str]) -> None:
    step(f"wheel {wheel.name}")
    dist_info = f"{DIST_NAME}-{version}.dist-info"
    check(wheel.name == f"{DIST_NAME}-{version}-py3-none-any.whl",
          f"wheel is named {wheel.name}, expected {DIST_NAME}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = Parser().parsestr(whl.read(f"{dist_info}/METADATA").decode()) \
            if f"{dist_info}/METADATA" in names else None
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode() \
            if f"{dist_info}/entry_points.txt" in names else ""
    compare("wheel", {n for n in names if n.startswith(PACKAGE + "/")}, expected)
    check(f"{dist_info}/licenses/LICENSE" in names, f"wheel lacks {dist_info}/licenses/LICENSE")
    check("resnet-multi = resnet_multi.cli:main" in entry_points, "wheel lacks the resnet-multi console script")
    if check(metadata is not None, f"wheel lacks {dist_info}/METADATA"):
        check(metadata["Name"] == "resnet-multi", f"wheel metadata Name is {metadata['Name']!r}")
        check(metadata["Version"] == version, f"wheel metadata Version is {metadata['Version']!r}, "
                                              f"{PACKAGE}/__init__.py says {version!r}")
        check(metadata["License-Expression"] == "Apache-2.0",
              f"wheel metadata License-Expression is {metadata['License-Expression']!r}")
        check(f"\n## {version}\n" in (metadata.get_payload() or ""),
              f"the wheel's description has no '## {version}' changelog section (README.md, then CHANGELOG.md)")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True)


def check_installed(wheel: Path, work: Path, version: str) -> None:
    venv = work / "venv"
    step(f"fresh virtual environment {venv}, pip install {wheel.name} (no extras)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, exe = venv / "bin" / "python", venv / "bin" / "resnet-multi"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                   check=True)
    # Outside the source tree, with nothing of the checkout on the path.
    cwd = work / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    code = ("import importlib.metadata as m, importlib.util as u, json, resnet_multi; "
            "print(json.dumps([resnet_multi.__file__, resnet_multi.__version__, m.version('resnet-multi'), "
            f"[n for n in {FRAMEWORKS!r} if u.find_spec(n)]]))")
    probe = run([str(python), "-c", code], cwd, env)
    if not check(probe.returncode == 0, f"import resnet_multi failed in the venv: {probe.stderr.strip()[-400:]}"):
        return
    where, runtime_version, dist_version, frameworks = json.loads(probe.stdout)
    check(Path(where).resolve().is_relative_to(venv.resolve()), f"resnet_multi imported from {where}, not the venv")
    check(runtime_version == version,
          f"installed resnet_multi.__version__ is {runtime_version!r}, expected {version!r}")
    check(dist_version == version, f"installed distribution version is {dist_version!r}, expected {version!r}")
    check(not frameworks, f"the fresh venv has frameworks installed: {frameworks}")

    step("resnet-multi --version")
    r = run([str(exe), "--version"], cwd, env)
    check(r.returncode == 0 and r.stdout.strip() == f"resnet-multi {version}",
          f"resnet-multi --version: rc {r.returncode}, printed {(r.stdout + r.stderr).strip()!r}")

    step("resnet-multi list")
    r = run([str(exe), "list"], cwd, env)
    check(r.returncode == 0 and "resnet50" in r.stdout and "d2l_resnet18" in r.stdout,
          f"resnet-multi list: rc {r.returncode}, {(r.stderr or r.stdout).strip()[-400:]!r}")

    step("resnet-multi summary resnet50 --json")
    r = run([str(exe), "summary", "resnet50", "--json"], cwd, env)
    try:
        total = json.loads(r.stdout)["total_params"] if r.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        total = None
    check(total == RESNET50_PARAMS, f"resnet-multi summary resnet50 --json: rc {r.returncode}, total_params {total}, "
                                    f"expected {RESNET50_PARAMS} ({r.stderr.strip()[-400:]!r})")

    step("resnet-multi summary resnet20 --backend torch (torch is not installed: exit 2, one line)")
    r = run([str(exe), "summary", "resnet20", "--backend", "torch"], cwd, env)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2 and len(lines) == 1 and 'pip install "resnet-multi[torch]"' in r.stderr,
          f"missing backend: rc {r.returncode} (expected 2), stderr {r.stderr.strip()[-400:]!r} "
          f"(expected one line naming pip install \"resnet-multi[torch]\")")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    start = time.monotonic()
    version = source_version()
    expected = source_files()
    check(any(f.startswith(f"{PACKAGE}/backends/") for f in expected), "no resnet_multi/backends/ in the source tree")
    wheel_name = f"{DIST_NAME}-{version}-py3-none-any.whl"
    check(wheel_name in (ROOT / "README.md").read_text(),
          f"README.md's install-from-a-wheel lines do not name {wheel_name}")
    work = Path(tempfile.mkdtemp(prefix="resnet-multi-wheel-"))
    try:
        sdist, wheel = build(work)
        check_sdist(sdist, version, expected)
        check_wheel(wheel, version, expected)
        check_installed(wheel, work, version)
    finally:
        if args.keep:
            step(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for message in problems:
        print(f"[wheel] FAIL: {message}", file=sys.stderr)
    step(f"{'FAILED' if problems else 'ok'}: version {version}, {len(expected)} package files, "
         f"{time.monotonic() - start:.0f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
