"""Layer tables measured on a backend's real model, and comparison with the analytic one."""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.memory import check_model_fits
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.shapes import LayerRow, LayerTable, layer_table
from resnet_multi.arch.spec import ResNetSpec


def _chw(activation: np.ndarray) -> tuple[int, int, int]:
    if activation.ndim == 2:  # classifier output (N, classes): report as (classes, 1, 1)
        return (int(activation.shape[1]), 1, 1)
    return tuple(int(d) for d in activation.shape[1:])  # type: ignore[return-value]


def measured_table(spec: ResNetSpec | str, backend: str, input_shape=None, device: str = "auto",
                   batch: int = 2, seed: int = 0, allow_large: bool = False, state=None
                   ) -> tuple[LayerTable, dict[str, Any]]:
    """Build the native model, run a real forward pass, and tabulate what it did.

    Shapes come from the activations the framework computed; params and
    buffers are counted from the framework's own variables. MACs are the
    analytic ones (frameworks do not count them). Returns the table and
    ``{"backend", "device", "framework_version"}``. What cannot fit in memory
    is refused (TooLarge) before the model is built, unless ``allow_large``. ``state``: a canonical
    state for the model (pretrained weights) instead of the seeded init.
    """
    spec = resolve(spec)
    input_shape = tuple(input_shape or spec.input_shape)
    expected = layer_table(spec, input_shape)  # raises InputTooSmall before anything is built
    check_model_fits(spec, input_shape, batch, allow_large=allow_large)
    face = faces.backend(backend)
    model = face.build(spec, device=device, state=state)
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    table = tabulate(expected, face.activations(model, x, train=False), face.row_counts(model))
    info = {"backend": face.name, "device": face.device_of(model), "framework_version": face.version()}
    return table, info


def tabulate(expected: LayerTable, acts: dict[str, Any], counts: dict[str, tuple[int, int]]) -> LayerTable:
    """A measured table from a forward pass's activations and the framework's own counts.

    MACs are copied from the analytic table (frameworks do not count them).
    A row the framework counted parameters for but never produced shows up
    with shape (0, 0, 0), so the comparison names it.
    """
    macs = {r.name: r.macs for r in expected.layers}
    rows = []
    for name, act in acts.items():
        params, buffers = counts.get(name, (0, 0))
        rows.append(LayerRow(name, _chw(np.asarray(act)), int(params), int(buffers), macs.get(name, 0)))
    for name, (params, buffers) in counts.items():
        if name not in acts:
            rows.append(LayerRow(name, (0, 0, 0), int(params), int(buffers), 0))
    return LayerTable(expected.name, expected.input_shape, tuple(rows))


def first_difference(expected: LayerTable, measured: LayerTable) -> str | None:
    """None when the tables agree on names, order, shapes, params and buffers; else one line."""
    for i, (want, got) in enumerate(zip(expected.layers, measured.layers)):
        if want.name != got.name:
            return f"row {i}: expected layer {want.name}, the model has {got.name}"
        for key in ("output_shape", "params", "buffers"):
            if getattr(want, key) != getattr(got, key):
                return (f"layer {want.name}: {key} differs: spec says {getattr(want, key)}, "
                        f"model has {getattr(got, key)}")
    if len(expected.layers) != len(measured.layers):
        longer = expected if len(expected.layers) > len(measured.layers) else measured
        which = "the spec" if longer is expected else "the model"
        return f"only {which} has layer {longer.layers[min(len(expected.layers), len(measured.layers))].name}"
    return None
