"""The user-facing commands and the weights API, run against each backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import resnet_multi
from resnet_multi import faces
from resnet_multi.arch.shapes import layer_table
from resnet_multi.numerics.parity import seeded_input
from resnet_multi.weights.canonical import init_weights, save_state


def cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_multi", *args], capture_output=True, text=True,
                          timeout=600)


def test_summary_parity_and_bench_commands(backend, face):
    out = cli("summary", "resnet50", "--backend", backend, "--input-shape", "3,64,64", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout)
    analytic = layer_table(resnet_multi.get_spec("resnet50"), (3, 64, 64)).to_dict()
    assert measured["backend"] == backend and measured["layers"] == analytic["layers"]

    out = cli("parity", "resnet20", "--backend", backend, "--input-shape", "3,19,23", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["max_abs_diff"] <= report["tolerance"]

    out = cli("bench", "resnet20", "--backend", backend, "--mode", "train", "--batch-size", "2", "--repeats", "1",
              "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    timing = json.loads(out.stdout)
    assert timing["mode"] == "train" and timing["images_per_s"] > 0 and timing["median_s"] > 0
    assert not timing["fast_path"]

    # Inference times the fast path (folded BN) unless --plain; both say what they ran.
    for flags, fast in (((), True), (("--plain",), False)):
        out = cli("bench", "resnet20", "--backend", backend, "--batch-size", "2", "--repeats", "1",
                  "--input-shape", "3,16,16", "--device", "cpu", "--json", *flags)
        assert out.returncode == 0, out.stderr[-2000:]
        timing = json.loads(out.stdout)
        assert timing["fast_path"] is fast and timing["images_per_s"] > 0
        assert ("folded BN" in timing["practice"]) is fast


def test_save_and_load_weights_through_the_canonical_file(backend, face, tmp_path):
    spec = resnet_multi.get_spec("gluon_resnet18_v2")  # input BN, pre-activation: every kind of tensor
    state = init_weights(spec, 9, perturb_bn=True)
    source = save_state(state, tmp_path / "in.safetensors", spec)
    model = resnet_multi.build(spec, backend=backend, device="cpu")
    resnet_multi.load_weights(model, source)
    assert resnet_multi.backend_of(model) == backend
    resnet_multi.save_weights(model, tmp_path / "out.safetensors")
    other = resnet_multi.build(spec, backend=backend, device="cpu", )
    resnet_multi.load_weights(other, tmp_path / "out.safetensors")
    x = seeded_input((3, 33, 35), 2, 0)
    np.testing.assert_array_equal(face.forward(model, x), face.forward(other, x))
    from resnet_multi.weights.canonical import load_state

    back = load_state(tmp_path / "out.safetensors", spec)
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_compare_trains_a_cifar_net_and_a_failed_backend_exits_1(backend, face, tmp_path):
    # issue 14: --train-steps on a net without layer4 (the fingerprint came from the plan), and a second
    # backend whose interpreter is missing: exit 1, one line for it, this backend's results all kept.
    other = next(b for b in faces.names() if b != backend)
    out = cli("compare", "resnet20", "--backends", f"{backend},{other}", "--input-shape", "3,16,16",
              "--train-steps", "3", "--repeats", "1", "--batch-size", "4", "--python", f"{backend}={sys.executable}",
              "--python", f"{other}={tmp_path / 'missing'}", "--json", "--quiet")
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    column = report["backends"][backend]
    assert "error" not in column and column["parity"]["ok"] and column["timing"]["train"]["median_s"] > 0
    losses = column["train"]["losses"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert set(column["train"]["fingerprint"]) == {"conv1.weight", "layer3.2.conv2.weight", "fc.weight"}
    assert list(report["failed"]) == [other] and "does not exist" in report["failed"][other]
    assert out.stderr.splitlines() == [f"resnet-multi compare: {other} failed: {report['failed'][other]}"]
