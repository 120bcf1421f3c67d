"""Name maps between canonical weights and the frameworks' own model zoos (pure Python).

- torchvision / timm ResNets use the canonical names already; their state
  dicts only add ``num_batches_tracked`` counters, which carry no weights.
- keras.applications ResNet50/101/152 (v1) and ResNet50V2/101V2/152V2 name
  layers ``conv{stage+1}_block{block+1}_{k}_conv`` and so on.
- mxnet.gluon.model_zoo.vision resnet*_v1 / resnet*_v2 save parameters under
  their structural names (``features.4.0.body.0.weight``); GluonCV's ResNext
  (gluoncv/model_zoo/resnext.py) uses the same layout as v1.
- GluonCV's ResNetV1b (gluoncv/model_zoo/resnetv1b.py) has torchvision's module
  names (``layer1.0.downsample.0.weight``, ``fc.weight``) with Gluon's BN names
  (``bn1.gamma``, ``bn1.beta``).

The readers and writers of each framework's files live in
``resnet_multi/backends/<name>/files.py``; they use these maps.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from resnet_multi.arch.plan import Conv, Norm, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.weights.layouts import from_channels_last, to_channels_last

_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


# -- keras.applications -------------------------------------------------------------

_KERAS_PARTS = {"conv1": "1_conv", "bn1": "1_bn", "conv2": "2_conv", "bn2": "2_bn", "conv3": "3_conv",
                "bn3": "3_bn", "downsample.0": "0_conv", "downsample.1": "0_bn", "preact_bn": "preact_bn"}
_KERAS_TOP = {"conv1": "conv1_conv", "bn1": "conv1_bn", "post_bn": "post_bn", "fc": "predictions"}


def keras_applications_layer(module: str) -> str:
    """Canonical module name -> keras.applications layer name."""
    if module in _KERAS_TOP:
        return _KERAS_TOP[module]
    match = _BLOCK_RE.match(module)
    if not match or match.group(3) not in _KERAS_PARTS:
        raise UserError(f"keras.applications has no layer for {module!r}")
    stage, block, part = int(match.group(1)), int(match.group(2)), match.group(3)
    return f"conv{stage + 1}_block{block + 1}_{_KERAS_PARTS[part]}"


def keras_variables(module, canonical: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """A module's canonical tensors as a Keras layer's get_weights() list (Keras layout)."""
    name = module.name
    if isinstance(module, Norm):
        affine = [canonical[f"{name}.weight"], canonical[f"{name}.bias"]] if module.affine else []
        return affine + [canonical[f"{name}.running_mean"], canonical[f"{name}.running_var"]]
    biased = not isinstance(module, Conv) or module.bias  # a Linear always has its bias
    return [to_channels_last(canonical[f"{name}.weight"])] + ([canonical[f"{name}.bias"]] if biased else [])


def canonical_from_keras(module, variables: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of keras_variables."""
    name = module.name
    v = [np.asarray(a, dtype=np.float32) for a in variables]
    if isinstance(module, Norm):
        keys = (["weight", "bias"] if module.affine else []) + ["running_mean", "running_var"]
        return {f"{name}.{k}": a for k, a in zip(keys, v)}
    out = {f"{name}.weight": from_channels_last(v[0])}
    if not isinstance(module, Conv) or module.bias:
        out[f"{name}.bias"] = v[1]
    return out


# -- MXNet Gluon model zoo -------------------------------------------------------------

_GLUON_BN = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}
# Where each canonical block part sits in Gluon's blocks.
_GLUON_V1_BODY = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4", "conv3": "body.6",
                  "bn3": "body.7", "downsample.0": "downsample.0", "downsample.1": "downsample.1"}
_GLUON_V2_BODY = {"preact_bn": "bn1", "conv1": "conv1", "bn1": "bn2", "conv2": "conv2", "bn2": "bn3",
                  "conv3": "conv3", "downsample.0": "downsample"}


def gluon_zoo_names(spec: ResNetSpec) -> dict[str, str]:
    """Canonical tensor name -> Gluon model-zoo parameter name, for the gluon_resnet*_v1/_v2 layouts."""
    v2 = spec.preactivation
    stage0 = 5 if v2 else 4  # v1 features: conv, bn, relu, pool; v2 adds the data BN in front
    top = ({"input_bn": "features.0", "conv1": "features.1", "bn1": "features.2",
            "post_bn": f"features.{stage0 + len(spec.stages)}"} if v2
           else {"conv1": "features.0", "bn1": "features.1"})
    top["fc"] = "output"
    body = _GLUON_V2_BODY if v2 else _GLUON_V1_BODY
    names = {}
    p = plan(spec)
    for name in list(p.param_shapes()) + list(p.buffer_shapes()):
        module, leaf = name.rsplit(".", 1)
        match = _BLOCK_RE.match(module)
        if match:
            stage, block, part = int(match.group(1)), int(match.group(2)), match.group(3)
            if part not in body:
                raise UserError(f"the Gluon model zoo has no parameter for {name!r}")
            prefix = f"features.{stage0 + stage - 1}.{block}.{body[part]}"
        elif module in top:
            prefix = top[module]
        else:
            raise UserError(f"the Gluon model zoo has no parameter for {name!r}")
        is_bn = leaf in ("running_mean", "running_var") or (leaf in ("weight", "bias") and _is_norm(spec, module))
        names[name] = f"{prefix}.{_GLUON_BN[leaf] if is_bn else leaf}"
    return names


def _is_norm(spec: ResNetSpec, module: str) -> bool:
    return any(isinstance(m, Norm) and m.name == module for m in plan(spec).modules())


def from_gluon_zoo(spec: ResNetSpec, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gluon model-zoo parameters -> canonical state; every missing name is listed at once.

    Gluon stores the frozen scale and shift of v2's data BN. Its scale is
    ignored (fix_gamma) and its shift, never trained, is zero; a file whose
    shift is not zero is refused rather than silently changed.
    """
    names = gluon_zoo_names(spec)
    if "input_bn.running_mean" in names:
        beta = names["input_bn.running_mean"].rsplit(".", 1)[0] + ".beta"
        if beta in params and np.any(np.asarray(params[beta]) != 0):
            raise UserError(f"{beta} is not zero: this checkpoint's data BN has a shift that "
                            f"{spec.name}'s affine-free input_bn cannot hold")
    frozen = {f"{names['input_bn.running_mean'].rsplit('.', 1)[0]}.{k}"
              for k in ("gamma", "beta") if "input_bn.running_mean" in names}
    return _renamed(spec, params, names, "Gluon model-zoo", ignored=frozen)


def _renamed(spec: ResNetSpec, params: Mapping[str, np.ndarray], names: Mapping[str, str], source: str,
             ignored: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """The canonical state of ``params`` through ``names`` (canonical -> the source's), all or nothing:
    every missing and every extra parameter (``ignored`` aside) is listed at once."""
    missing = [g for g in names.values() if g not in params]
    if missing:
        raise UserError(f"not a {source} {spec.name} checkpoint: missing {len(missing)} parameters "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    used = set(names.values()) | set(ignored)
    extra = [k for k in params if k not in used]
    if extra:
        raise UserError(f"the checkpoint has {len(extra)} parameters {spec.name} does not: "
                        f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return {c: np.asarray(params[g], dtype=np.float32) for c, g in names.items()}


def to_gluon_zoo(spec: ResNetSpec, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical state -> Gluon model-zoo parameter names (v2's data BN gets scale 1, shift 0)."""
    names = gluon_zoo_names(spec)
    out = {g: np.asarray(state[c], dtype=np.float32) for c, g in names.items()}
    if "input_bn.running_mean" in names:
        prefix = names["input_bn.running_mean"].rsplit(".", 1)[0]
        out[f"{prefix}.gamma"] = np.ones(spec.in_channels, np.float32)
        out[f"{prefix}.beta"] = np.zeros(spec.in_channels, np.float32)
    return out


# -- GluonCV ResNetV1b ---------------------------------------------------------------

# The modules a ResNetV1b holds (gluoncv/model_zoo/resnetv1b.py, its default deep_stem=False, avg_down=False):
# the stem's conv1 and bn1, the blocks' convs and BNs and downsample (conv, BN), and fc.
_V1B_TOP = ("conv1", "bn1", "fc")
_V1B_PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1")


def gluoncv_v1b_names(spec: ResNetSpec) -> dict[str, str]:
    """Canonical tensor name -> GluonCV ResNetV1b parameter name: torchvision's names, a BN's weight and bias
    stored as ``gamma`` and ``beta``. A spec with a part ResNetV1b has not (v2's data BN, pre-activation BNs)
    is refused."""
    names = {}
    p = plan(spec)
    for name in list(p.param_shapes()) + list(p.buffer_shapes()):
        module, leaf = name.rsplit(".", 1)
        match = _BLOCK_RE.match(module)
        if not (module in _V1B_TOP or (match and match.group(3) in _V1B_PARTS)):
            raise UserError(f"GluonCV's ResNetV1b has no parameter for {name!r}")
        is_bn = leaf in ("running_mean", "running_var") or (leaf in ("weight", "bias") and _is_norm(spec, module))
        names[name] = f"{module}.{_GLUON_BN[leaf] if is_bn else leaf}"
    return names


def from_gluoncv_v1b(spec: ResNetSpec, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GluonCV ResNetV1b parameters -> canonical state; every missing and every extra name is listed at once."""
    return _renamed(spec, params, gluoncv_v1b_names(spec), "GluonCV ResNetV1b")


def to_gluoncv_v1b(spec: ResNetSpec, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical state -> GluonCV ResNetV1b parameter names."""
    return {g: np.asarray(state[c], dtype=np.float32) for c, g in gluoncv_v1b_names(spec).items()}


__all__ = ["keras_applications_layer", "keras_variables", "canonical_from_keras",
           "gluon_zoo_names", "from_gluon_zoo", "to_gluon_zoo",
           "gluoncv_v1b_names", "from_gluoncv_v1b", "to_gluoncv_v1b"]
