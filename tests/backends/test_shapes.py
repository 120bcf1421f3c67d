"""The cross-backend shape suite: every preset, every backend, odd input sizes.

The measured table (real model, real forward pass, the framework's own
parameter counting) must equal the spec's analytic table exactly.
"""

from __future__ import annotations

import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.shapes import layer_table, param_count
from resnet_multi.run.measure import first_difference, measured_table

# Deep or wide presets run at a reduced size so that the suite fits a 2-core machine.
SMALL = {"d2l_resnet18": [(1, 96, 96), (1, 33, 47)]}
DEFAULT_SIZES = [(3, 65, 65), (3, 64, 96)]
CIFAR_SIZES = [(3, 32, 32), (3, 17, 23)]
HEAVY_SIZES = [(3, 33, 47)]
# Deep or wide: over 40M parameters or over 30 blocks.
HEAVY = {n for n in presets.names()
         if param_count(presets.get(n)) > 40_000_000 or sum(s.blocks for s in presets.get(n).stages) > 30}


def _cases():
    for name in presets.names():
        spec = presets.get(name)
        if name in SMALL:
            sizes = SMALL[name]
        elif spec.in_channels != 3:
            sizes = [(spec.in_channels, 65, 65), (spec.in_channels, 64, 96)]
        elif name in HEAVY:
            sizes = HEAVY_SIZES
        elif spec.stem.kind == "cifar":
            sizes = CIFAR_SIZES
        else:
            sizes = DEFAULT_SIZES
        for size in sizes:
            yield pytest.param(name, size, id=f"{name}-{'x'.join(map(str, size))}")


@pytest.mark.parametrize("name,input_shape", list(_cases()))
def test_measured_table_equals_analytic(backend, face, name, input_shape):
    spec = presets.get(name)
    expected = layer_table(spec, input_shape)
    measured, info = measured_table(spec, backend, input_shape, device="cpu", batch=1)
    difference = first_difference(expected, measured)
    assert difference is None, f"{backend} {name} {input_shape}: {difference}"
    assert info["backend"] == backend
    assert measured.total_params == expected.total_params


def test_d2l_resnet18_matches_the_book(backend, face):
    # The book's layer_summary at 1x96x96 and its 11,178,378 trainable parameters.
    measured, _ = measured_table("d2l_resnet18", backend, (1, 96, 96), device="cpu", batch=1)
    shapes = {row.name: row.output_shape for row in measured.layers}
    assert shapes["stem"] == (64, 24, 24)
    assert shapes["layer2.1"] == (128, 12, 12)
    assert shapes["layer3.1"] == (256, 6, 6)
    assert shapes["layer4.1"] == (512, 3, 3)
    assert shapes["fc"] == (10, 1, 1)
    assert measured.total_params == 11_178_378


def test_build_returns_native_model_in_eval_mode(backend, face):
    model = face.build(presets.get("resnet20"), device="cpu")
    assert face.device_of(model).lower().startswith("cpu")


def test_unknown_device_is_a_clear_error(backend, face):
    from resnet_multi.errors import UserError

    with pytest.raises(UserError):
        face.resolve_device("tpu9")
