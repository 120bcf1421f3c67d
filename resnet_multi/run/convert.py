"""Convert weights between the canonical file and every framework's own formats.

Formats (``--from`` / ``--to``; guessed from the file name when omitted):

| format              | files                  | read and written by |
| ------------------- | ---------------------- | ------------------- |
| canonical           | .safetensors           | the core (numpy)    |
| torch               | .pt .pth .bin          | torch: torchvision, timm and our torch models share the canonical names |
| keras               | .weights.h5            | tensorflow: our Keras models |
| keras-applications  | .weights.h5 .h5        | tensorflow: keras.applications ResNet50/101/152 and V2 |
| flax                | .msgpack               | flax: our NNX models' state |
| gluon               | .params                | mxnet: our Gluon models |
| gluon-zoo           | .params                | mxnet: mxnet.gluon.model_zoo.vision resnet*_v1/_v2, GluonCV's resnext* |
| gluoncv-v1b         | .params                | mxnet: GluonCV's resnet*_v1b (ResNetV1b; pass it with --from/--to) |

A step whose framework is not importable here runs in that backend's
environment (found as ``compare`` finds it), through a canonical file in
between; so ``convert`` works from any environment that can reach the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from resnet_multi import faces
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.spec import ResNetSpec, spec_from_dict
from resnet_multi.errors import UserError
from resnet_multi.files import check_destination
from resnet_multi.run.interpreters import child_env, find_python
from resnet_multi.weights.canonical import expected_shapes, file_metadata, file_spec, load_state, save_state
from resnet_multi.weights.formats import FORMATS

KERAS_APPLICATIONS = {"resnet50_v1", "resnet101_v1", "resnet152_v1", "resnet50_v2", "resnet101_v2", "resnet152_v2"}


def guess_format(path: str | Path, spec: ResNetSpec | None) -> str:
    name = str(path).lower()
    if name.endswith(".safetensors"):
        return "canonical"
    if name.endswith((".pt", ".pth", ".bin")):
        return "torch"
    if name.endswith(".h5"):
        return "keras-applications" if spec is not None and spec.name in KERAS_APPLICATIONS else "keras"
    if name.endswith(".msgpack"):
        return "flax"
    if name.endswith(".params"):
        return "gluon-zoo" if spec is not None and spec.name.startswith("gluon_") else "gluon"
    raise UserError(f"{path}: cannot tell the format from the name; pass --from/--to "
                    f"({', '.join(FORMATS)})")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


def convert(src: str | Path, dst: str | Path, arch: str | ResNetSpec | None = None, src_format: str | None = None,
            dst_format: str | None = None, python: dict[str, str] | None = None) -> dict[str, Any]:
    """Read ``src`` in its format and write the same weights to ``dst`` in another.

    The report's ``notes`` say what was converted on the way (float16, bfloat16
    and float64 tensors to float32); tensors that are not floating point or not
    finite refuse the whole file. ``dst`` is checked before any work: never the
    source itself (through links too), a folder, or a name in a missing folder.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    check_destination(dst)
    if dst.exists() and os.path.samefile(src, dst):
        raise UserError(f"{dst}: is the source {src} itself; convert writes a new file and never overwrites its "
                        "source")
    spec = resolve(arch) if arch is not None else None
    src_format = _check_format(src_format or guess_format(src, spec))
    if spec is None:
        if src_format != "canonical":
            raise UserError(f"{src}: --arch is required unless the source is a canonical file that names its spec")
        spec = file_spec(src)
        if spec is None:
            raise UserError(f"{src} does not name its architecture; pass --arch")
    dst_format = _check_format(dst_format or guess_format(dst, spec))
    if FORMATS[dst_format] == "tensorflow" and not dst.name.endswith(".weights.h5"):  # before reading anything
        raise UserError(f"{dst}: Keras 3 writes weights files named *.weights.h5")
    with tempfile.TemporaryDirectory(prefix="resnet-multi-convert-") as tmp:
        if src_format == "canonical":
            middle = src
            state = load_state(src, spec)  # validate: refuse the whole file if it does not fit
            notes = state.notes
        else:
            middle = Path(tmp) / "canonical.safetensors"
            _step("read", src_format, spec, src, middle, python or {})
            state = None
            notes = json.loads(file_metadata(middle).get("notes", "[]"))  # the reader's, in its environment
        if dst_format == "canonical":
            save_state(state if state is not None else load_state(middle, spec), dst, spec)
        else:
            _step("write", dst_format, spec, middle, dst, python or {})
    return {"source": str(src), "source_format": src_format, "destination": str(dst),
            "destination_format": dst_format, "arch": spec.name, "tensors": len(expected_shapes(spec)),
            "notes": notes}


def _step(direction: str, fmt: str, spec: ResNetSpec, src: Path, dst: Path, python: dict[str, str]) -> None:
    backend = FORMATS[fmt]
    assert backend is not None
    if faces.importable(backend):
        run_step(faces.backend(backend), direction, fmt, spec, src, dst)
        return
    interpreter, source = find_python(backend, python)
    if interpreter is None:
        raise UserError(f"the {fmt} format needs {backend}, which is not installed here: {source}")
    request = json.dumps({"direction": direction, "format": fmt, "spec": spec.to_dict(), "src": str(src),
                          "dst": str(dst)})
    out = subprocess.run([interpreter, "-m", "resnet_multi.run.convert", "--step", request],
                         capture_output=True, text=True, env=child_env())
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{direction} {fmt} in the {backend} environment failed: {tail}")


def run_step(face: faces.BackendFace, direction: str, fmt: str, spec: ResNetSpec, src: Path, dst: Path) -> None:
    if direction == "read":
        state = face.read_file(src, spec, fmt)
        save_state(state, dst, spec, notes=getattr(state, "notes", ()))  # the middle file carries the notes
    else:
        face.write_file(load_state(src, spec), dst, spec, fmt)


def _step_main(request_text: str) -> int:
    """Entry point of a step run in another environment."""
    request = json.loads(request_text)
    spec = spec_from_dict(request["spec"])
    backend = FORMATS[request["format"]]
    try:
        run_step(faces.backend(backend), request["direction"], request["format"], spec,
                 Path(request["src"]), Path(request["dst"]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.convert")
    parser.add_argument("--step", required=True, help="internal: one read or write step, as JSON")
    raise SystemExit(_step_main(parser.parse_args().step))
