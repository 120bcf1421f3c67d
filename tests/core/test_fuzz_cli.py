"""Property: whatever arguments a user types, a command succeeds, or fails with one line and exit 2.

Random argument lists over the commands that need no framework here (list,
summary, convert between canonical files, and train/bench/parity/summary
--backend with a backend that is not installed, the missing-backend path),
run in-process in a fresh working folder. Each must exit 0, or exit 2 with
exactly one line on stderr and no traceback (no exception escapes main); no
file in the working folder is created or changed other than the requested
destination (issue 14, the guards for the class).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.arch.spec import save_spec
from resnet_multi.cli.commands import main
from resnet_multi.weights.canonical import init_weights, save_state

MISSING = [b for b in faces.names() if not faces.importable(b)]
pytestmark = pytest.mark.skipif(not MISSING, reason="every framework is installed here: no missing-backend path")

JUNK = ["", " ", "-", "--", "nan", "inf", "-inf", "1e3", "0x10", "\u0663", "\u00b2", "9" * 40, "-0", "1_0",
        "a\x00b", "\udcff", "../x", "/"]
HOSTILE = st.one_of(st.sampled_from(JUNK), st.text(max_size=8))


def value(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly a plausible value (so that commands get past parsing), sometimes a hostile one."""
    return st.integers(0, 9).flatmap(lambda r: valid if r < 7 else HOSTILE)


INTS = value(st.integers(-2, 12).map(str))
FLOATS = value(st.one_of(st.sampled_from(["0.1", "0.9", "1e-3", "0", "-1", "1"]),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr)))
SHAPES = value(st.one_of(st.tuples(*[st.integers(0, 40)] * 3).map(lambda t: ",".join(map(str, t))),
                         st.sampled_from(["3,100000,100000", "3x16x16", "1,2", "a,b,c", "3,16,16,16"])))
MODELS = value(st.sampled_from(["resnet20", "d2l_resnet18", "resnet50", "net.toml", "net.json", "bad.toml",
                                "empty.json", "missing.toml", "w.safetensors", "resnet5"]))
BACKENDS = st.sampled_from(MISSING + ["caffe", "", "TORCH", "jax", "tf"])
DEVICES = value(st.sampled_from(["auto", "cpu", "gpu", "gpu:1", "cuda:0", "cpu:x", "tpu"]))
FILES = value(st.sampled_from(["w.safetensors", "other.safetensors", "net.toml", "bad.toml", "folder",
                               "missing.safetensors", "out.safetensors", "folder/out.safetensors",
                               "nowhere/out.safetensors", "out.pth", "out.msgpack", "out.bin", "run"]))


def option(name: str, values) -> st.SearchStrategy[list[str]]:
    """The option with a value, or (half the time) absent."""
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


def flag(name: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from([[], [name]])


def command(name: str, *parts) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda groups: [name] + [a for g in groups for a in g])


ARGV = st.one_of(
    command("list", flag("--json"), st.sampled_from([[], ["extra"], ["--bogus"]])),
    command("summary", MODELS.map(lambda m: [m]), option("--input-shape", SHAPES), option("--backend", BACKENDS),
            option("--device", DEVICES), flag("--allow-large"), flag("--json")),
    command("convert", FILES.map(lambda f: [f]), FILES.map(lambda f: [f]), option("--arch", MODELS),
            option("--from", st.sampled_from(["canonical", "torch", "flax", "nope"])),
            option("--to", st.sampled_from(["canonical", "torch", "gluon", "nope"])),
            # Never the real backend environments of this checkout: a missing interpreter fails fast.
            st.just([a for b in faces.names() for a in ("--python", f"{b}=nowhere/python")]), flag("--json")),
    command("train", MODELS.map(lambda m: [m]), BACKENDS.map(lambda b: ["--backend", b]),
            st.just(["--dataset", "digits"]), option("--epochs", INTS), option("--batch-size", INTS),
            option("--lr", FLOATS), option("--momentum", FLOATS), option("--resize", INTS), option("--seed", INTS),
            option("--device", DEVICES), option("--out", FILES), flag("--resume"), flag("--allow-large"),
            flag("--quiet"), flag("--json")),
    command("bench", MODELS.map(lambda m: [m]), BACKENDS.map(lambda b: ["--backend", b]),
            option("--mode", st.sampled_from(["infer", "train", "eval"])), option("--batch-size", INTS),
            option("--input-shape", SHAPES), option("--repeats", INTS), option("--warmup", INTS),
            option("--precision", st.sampled_from(["fp32", "bf16", "fp8"])), option("--device", DEVICES),
            flag("--allow-large"), flag("--json")),
    command("parity", MODELS.map(lambda m: [m]), BACKENDS.map(lambda b: ["--backend", b]),
            option("--input-shape", SHAPES), option("--batch-size", INTS), option("--seed", INTS),
            option("--mode", st.sampled_from(["eval", "train", "infer"])), flag("--allow-large"), flag("--json")),
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """The files each example's working folder starts with."""
    root = tmp_path_factory.mktemp("fuzz-originals")
    spec = presets.get("resnet20")
    save_state(init_weights(spec, 0), root / "w.safetensors", spec)
    other = presets.get("resnet32")
    save_state(init_weights(other, 1), root / "other.safetensors", other)
    save_spec(spec.replace(name="net_t"), root / "net.toml")
    save_spec(spec.replace(name="net_j"), root / "net.json")
    (root / "bad.toml").write_text('name = "x"\nblock = "basic"\n[[stages]]\nblocks = 2\nchannels = 8\nstride = -1\n')
    (root / "empty.json").write_text("")
    (root / "folder").mkdir()
    return root


@contextlib.contextmanager
def working_folder(path: Path):
    # contextlib.chdir is Python 3.11+; the project supports 3.10.
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def destinations(argv: list[str]) -> set[str]:
    """What the command was asked to write: convert's DST, train's run folder."""
    if argv[0] == "convert":
        return {os.path.normpath(argv[2])}
    if argv[0] == "train" and "--out" in argv:
        return {os.path.normpath(argv[argv.index("--out") + 1])}
    return set()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_any_arguments_give_success_or_one_line(argv, originals, capsys):
    with tempfile.TemporaryDirectory(prefix="resnet-multi-fuzz-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(originals, work)
        before = snapshot(work)
        with working_folder(work):
            code = main(argv)
        out = capsys.readouterr()
        event(f"{argv[0]}: exit {code}")
        assert code in (0, 2), (argv, code, out.err)
        if code == 2:
            assert "Traceback" not in out.err, (argv, out.err)
            assert len(out.err.strip().splitlines()) == 1, (argv, out.err)
        after = snapshot(work)
        allowed = destinations(argv)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        unexpected = {k for k in changed if not any(k == d or k.startswith(d.rstrip("/") + "/") for d in allowed)}
        assert not unexpected, (argv, code, out.err, unexpected)
