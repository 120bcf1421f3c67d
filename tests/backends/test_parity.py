"""Numerical parity: each backend against the NumPy float64 reference, every preset.

Seeded weights with random BN statistics, odd input sizes (where 'same'
padding would shift windows), logits within 1e-4 x max(1, max |ref|).
"""

from __future__ import annotations

import pytest

from resnet_multi.arch import presets
from resnet_multi.numerics.parity import parity_report

from .test_shapes import HEAVY


def _size(name):
    spec = presets.get(name)
    if spec.stem.kind == "cifar":
        return (spec.in_channels, 19, 23)
    if name in HEAVY:
        return (spec.in_channels, 33, 47)
    return (spec.in_channels, 65, 63)


@pytest.mark.parametrize("name", presets.names())
def test_eval_parity(backend, face, name):
    report = parity_report(name, backend, _size(name), seed=3, mode="eval", batch=2, device="cpu")
    assert report["ok"], (f"{backend} {name}: logits differ by {report['max_abs_diff']:.3g} "
                          f"(tolerance {report['tolerance']:.3g}); first divergent layer: "
                          f"{report['first_divergent_layer']}")


@pytest.mark.parametrize("name", [n for n in presets.names() if n not in HEAVY])
def test_train_mode_parity(backend, face, name):
    report = parity_report(name, backend, _size(name), seed=5, mode="train", batch=4, device="cpu")
    detail = report.get("running_stats")
    assert report["ok"], (f"{backend} {name} train: logits differ by {report['max_abs_diff']:.3g} "
                          f"(tolerance {report['tolerance']:.3g}), first divergent layer "
                          f"{report['first_divergent_layer']}; running stats: {detail}")


def test_parity_report_schema(backend, face):
    report = parity_report("resnet20", backend, (3, 16, 16), seed=0, mode="eval", batch=1, device="cpu")
    for key in ("backend", "name", "mode", "max_abs_diff", "ref_max_abs", "layers", "ok"):
        assert key in report
    assert [r["name"] for r in report["layers"]][:2] == ["stem", "layer1.0"]
    assert report["layers"][-1]["name"] == "fc"


def test_parity_of_given_weights(backend, face):
    """state= checks those weights (e.g. pretrained ones) instead of the seeded init."""
    from resnet_multi.weights.canonical import init_weights

    spec = presets.get("resnet20")
    given = init_weights(spec, 11, perturb_bn=True)
    ours = parity_report(spec, backend, (3, 9, 11), seed=0, device="cpu", state=given)
    seeded = parity_report(spec, backend, (3, 9, 11), seed=0, device="cpu")
    assert ours["ok"] and seeded["ok"]
    assert ours["ref_max_abs"] != seeded["ref_max_abs"]  # other weights, other logits
    assert ours["ref_max_abs"] == parity_report(spec, backend, (3, 9, 11), seed=0, device="cpu",
                                                state=init_weights(spec, 11, perturb_bn=True))["ref_max_abs"]
