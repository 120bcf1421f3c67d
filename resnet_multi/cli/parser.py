"""The ``resnet-multi`` argument parser: every command, its options and their checks (cli/arguments.py).

What each command does is in cli/commands.py; this file only says what it takes.
"""

from __future__ import annotations

import argparse

from resnet_multi import faces
from resnet_multi.cli import arguments as arg

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


PRECISIONS = ("fp32", "bf16", "fp16")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=arg.path_arg, metavar="NAME_OR_SPEC_FILE", help="a preset name or a .json/.toml spec file")


def _add_backend(p: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    p.add_argument("--backend", type=arg.backend_arg, required=required, metavar="NAME",
                   help=help or f"one of {', '.join(faces.names())}")


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=arg.input_shape_arg, metavar="C,H,W",
                   help="input size (default: the preset's own, e.g. 1,96,96 for the book's nets, "
                        "3,32,32 CIFAR, 3,224,224 ImageNet)")


def _add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", type=arg.device_arg, default=default, metavar="DEVICE",
                   help=f"auto, cpu, gpu or gpu:N (default {default})")


def _add_seed(p: argparse.ArgumentParser, help: str = "weights and input seed (default 0)") -> None:
    p.add_argument("--seed", type=arg.seed_arg, default=0, help=help)


def _add_allow_large(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-large", action="store_true",
                   help="skip the check that the model, batch and input fit in this machine's memory")


def _add_python(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                   help="the interpreter of a backend's environment (repeatable)")


def _add_weights(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--weights", type=arg.path_arg, required=required, metavar="NAME_OR_PATH",
                   help="pretrained weights: a registry name (resnet-multi weights list), a user entry's name "
                        "(--weights-file) or a weights file; downloaded, verified and converted once")
    p.add_argument("--weights-file", type=arg.path_arg, action="append", metavar="FILE",
                   help="a TOML file of user weights entries ([[weights]] tables; repeatable)")


def _add_compare_options(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    p.add_argument("--backends", type=arg.backends_arg, default=faces.names(), metavar="LIST",
                   help=f"comma-separated (default {','.join(faces.names())})")
    _add_input_shape(p)
    p.add_argument("--batch-size", type=arg.positive_int, default=8, metavar="N", help="default 8")
    _add_seed(p)
    _add_device(p, default="cpu")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="timing precision")
    p.add_argument("--repeats", type=arg.positive_int, default=5, metavar="N", help="timed repeats (default 5)")
    p.add_argument("--train-steps", type=arg.nonnegative_int, default=0, metavar="N",
                   help="also show the loss of the first N plain-SGD steps per backend")
    p.add_argument("--workers", type=arg.positive_int, metavar="N",
                   help="with --train-steps: also run those steps on each framework's data-parallel engine over "
                        "N >= 2 workers (the batch split evenly over them, BN over the whole batch) and show "
                        "their losses beside the single worker's (docs/distributed.md)")
    _add_python(p)
    _add_weights(p)
    p.add_argument("--plot", type=arg.path_arg, metavar="FILE.png", help="write a chart: speed per backend, parity per layer")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (failures still are)")
    _add_allow_large(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-multi", description=(
        "One ResNet/ResNeXt spec lowered to PyTorch, TensorFlow (Keras 3), Flax (NNX) and MXNet (Gluon)."))
    parser.add_argument("--version", action="version", version=f"resnet-multi {__import__('resnet_multi').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    with_json = argparse.ArgumentParser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("list", parents=[with_json], help="list the preset zoo", description="List the preset zoo.")

    p = sub.add_parser("summary", parents=[with_json], help="per-layer table: shapes, params, buffers, MACs",
                       description="Per-layer table of a preset or spec file: output shape (C,H,W), "
                                   "trainable params, BN buffers, MACs. Analytic by default; with "
                                   "--backend, measured on that framework's real model.")
    _add_model(p)
    _add_input_shape(p)
    _add_backend(p, required=False, help=f"measure on a real model: {', '.join(faces.names())}")
    _add_device(p)
    _add_weights(p)
    head = p.add_mutually_exclusive_group()
    head.add_argument("--num-classes", type=arg.nonnegative_int, metavar="K",
                      help="another head: K classes (new, freshly initialised), or 0 for none (pooled features)")
    head.add_argument("--features", type=arg.indices_arg, metavar="I,J,...",
                      help="a feature extractor returning these stages' maps (0 = the stem, 1 ... the stages); "
                           "adds its feature_info (channels, reduction)")
    _add_allow_large(p)

    p = sub.add_parser("parity", parents=[with_json], help="one backend against the NumPy reference, layer by layer",
                       description="Run a backend and the NumPy float64 reference on the same seeded weights "
                                   "(random BN statistics) and input; report each layer's max abs and relative "
                                   "difference and whether the logits are within 1e-4 x max(1, max|ref|). "
                                   "Exits 1 when they are not.")
    _add_model(p)
    _add_backend(p)
    _add_input_shape(p)
    p.add_argument("--batch-size", type=arg.positive_int, default=2, metavar="N", help="batch size (default 2)")
    _add_seed(p)
    p.add_argument("--mode", choices=("eval", "train"), default="eval",
                   help="eval: running statistics; train: batch statistics and their update (default eval)")
    _add_device(p)
    _add_weights(p)
    _add_allow_large(p)

    p = sub.add_parser("diff", parents=[with_json], help="two specs: the fields that differ, and where their outputs part",
                       description="The spec fields that differ between two presets or spec files and, when they "
                                   "hold the same tensors, the first layer whose output differs on the same seeded "
                                   "weights (random BN statistics) and input, and by how much: both through the "
                                   "NumPy float64 reference (no framework), in eval mode and in train mode (with "
                                   "the running statistics each leaves).")
    p.add_argument("a", type=arg.path_arg, metavar="A", help="a preset name or a .json/.toml spec file")
    p.add_argument("b", type=arg.path_arg, metavar="B", help="the other one")
    _add_input_shape(p)
    p.add_argument("--batch-size", type=arg.positive_int, default=2, metavar="N", help="batch size (default 2)")
    _add_seed(p)
    _add_allow_large(p)

    p = sub.add_parser("compare", parents=[with_json], help="every backend side by side, each in its own environment",
                       description="Run each backend in its own interpreter (MXNet and JAX cannot share one) on "
                                   "one seeded weights file and input; report layer shapes and params, parity "
                                   "with the NumPy reference, speed, and environments side by side. "
                                   "Interpreters: --python B=PATH, RESNET_MULTI_PYTHON_<B>, .nox/<B>/bin/python, "
                                   "or this one. --train-steps K adds each backend's first K SGD steps from "
                                   "the same weights and batches; --workers N also runs them on N data-parallel "
                                   "workers. Exits 1 when a backend fails (one line each on stderr).")
    _add_compare_options(p)

    p = sub.add_parser("report", parents=[with_json], help="compare, written as one self-contained HTML page",
                       description="Run compare (same options) and write one HTML file that opens offline: "
                                   "compare's tables and charts, and the four backends' model.py side by side, "
                                   "part by part (stem, block, stage, head, build), with each part's shapes and "
                                   "parameters. Needs Pygments (the report extra). Exits 1 when a backend fails.")
    _add_compare_options(p)
    p.add_argument("--html", type=arg.path_arg, required=True, metavar="FILE.html", help="the page to write")

    from resnet_multi.run.convert import FORMATS

    p = sub.add_parser("convert", parents=[with_json], help="convert weights between the canonical file and framework formats",
                       description="Convert weights: canonical .safetensors, torch/torchvision/timm .pth, Keras "
                                   ".weights.h5 (ours or keras.applications), Flax .msgpack, Gluon .params (ours "
                                   "or the model zoo; GluonCV's ResNetV1b as gluoncv-v1b). A file that does not "
                                   "fit the architecture is refused "
                                   "whole. Steps whose framework is not installed here run in that backend's "
                                   "environment.")
    p.add_argument("src", type=arg.path_arg, metavar="SRC")
    p.add_argument("dst", type=arg.path_arg, metavar="DST")
    p.add_argument("--arch", type=arg.path_arg, metavar="NAME_OR_SPEC_FILE",
                   help="the architecture (optional when SRC is a canonical file that names it)")
    p.add_argument("--from", dest="src_format", choices=list(FORMATS), help="SRC's format (default: from its name)")
    p.add_argument("--to", dest="dst_format", choices=list(FORMATS), help="DST's format (default: from its name)")
    _add_python(p)

    p = sub.add_parser("bench", parents=[with_json], help="time inference or a training step with the framework's best practice",
                       description="Time one backend: warm-up excluded, median and spread of several repeats, "
                                   "images/s. Inference times the fast path (for_inference: BNs folded into the "
                                   "convs; torch channels_last + torch.compile, TensorFlow one graph, JAX one jit, "
                                   "MXNet's oneDNN partition); --plain times the plain model. Training: torch "
                                   "channels_last (+ torch.compile with --compile), TensorFlow's train step, JAX jit "
                                   "with donated buffers, MXNet hybridize with static_alloc/static_shape.")
    _add_model(p)
    _add_backend(p)
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--batch-size", type=arg.positive_int, default=16, metavar="N")
    _add_input_shape(p)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    _add_device(p)
    p.add_argument("--repeats", type=arg.positive_int, default=5, metavar="N")
    p.add_argument("--warmup", type=arg.nonnegative_int, default=2, metavar="N")
    p.add_argument("--compile", action="store_true", help="torch.compile (torch; others compile anyway)")
    p.add_argument("--plain", action="store_true",
                   help="infer: time the plain model (BNs unfolded, no fast path) instead of for_inference's")
    _add_weights(p)
    _add_allow_large(p)

    p = sub.add_parser("train", parents=[with_json], help="train in one backend (the book's recipe by default)",
                       description="Train a preset or spec in one backend: the book's defaults (Fashion-MNIST "
                                   "96x96, batch 128, SGD lr 0.01, 10 epochs). Writes checkpoint.safetensors "
                                   "(weights + optimizer state), metrics.json and curves.png into --out after "
                                   "every epoch; --resume continues from there exactly.")
    _add_model(p)
    _add_backend(p)
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"),
                   help="fashion-mnist (downloaded and checked, or --data-dir) or digits (embedded, no network)")
    p.add_argument("--data-dir", type=arg.path_arg, metavar="DIR", help="folder with the Fashion-MNIST IDX .gz files")
    p.add_argument("--epochs", type=arg.positive_int, default=10)
    p.add_argument("--batch-size", type=arg.positive_int, default=128)
    p.add_argument("--lr", type=arg.learning_rate_arg, default=0.01, help="learning rate > 0 (default 0.01)")
    p.add_argument("--momentum", type=arg.momentum_arg, default=0.0, help="SGD momentum in [0, 1) (default 0)")
    p.add_argument("--resize", type=arg.positive_int, default=96, help="image side (default 96, the book's)")
    _add_seed(p, help="weights and shuffling seed (default 0)")
    _add_device(p)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--out", type=arg.path_arg, metavar="DIR", help="run folder (default runs/NAME-BACKEND)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_weights(p)
    p.add_argument("--num-classes", type=arg.positive_int, metavar="K",
                   help="replace the head by a freshly initialised one of K classes (seeded, the spec's init)")
    p.add_argument("--workers", type=arg.positive_int, default=1, metavar="N",
                   help="data-parallel workers on the framework's own engine (docs/distributed.md); --batch-size "
                        "is the global batch, split evenly over them (default 1)")
    p.add_argument("--sync-bn", action="store_true",
                   help="BN statistics over the global batch (else each worker's slice)")
    p.add_argument("--check-replicas", action="store_true",
                   help="after every step of the first epoch, measure that every worker holds the same weights "
                        "(metrics.json: steps[].weights_spread)")
    _add_allow_large(p)

    p = sub.add_parser("predict", parents=[with_json], help="classify images with pretrained weights",
                       description="Classify images: read with Pillow (the predict extra), the weights entry's "
                                   "preprocessing applied once in NumPy (the same input for every framework), "
                                   "top-k class names and probabilities (softmax in float64). --backends runs "
                                   "each backend in its own environment and shows whether they agree; exits 1 "
                                   "when they do not or one fails.")
    p.add_argument("images", nargs="+", type=arg.path_arg, metavar="IMAGE")
    p.add_argument("--model", type=arg.path_arg, required=True, metavar="NAME_OR_SPEC_FILE",
                   help="a preset name or a .json/.toml spec file")
    _add_weights(p, required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--backend", type=arg.backend_arg, metavar="NAME", help=f"one of {', '.join(faces.names())}")
    which.add_argument("--backends", type=arg.backends_or_all_arg, metavar="LIST",
                       help="all, or a comma-separated list: each in its own environment, side by side")
    p.add_argument("--top", type=arg.positive_int, default=5, metavar="K", help="how many classes (default 5)")
    _add_device(p)
    _add_python(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines or download bar on stderr")

    p = sub.add_parser("weights", help="the registry of published pretrained weights",
                       description="The registry of published ImageNet weights (torchvision, keras.applications, "
                                   "the Gluon model zoo): where each file is, its checksum, format, the source's "
                                   "preprocessing and accuracy, each read from the framework's own sources.")
    wsub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", parser_class=_Parser)
    wsub.required = True
    w = wsub.add_parser("list", parents=[with_json], help="every entry: preset, name, format, top-1, host",
                        description="List the registry's entries: preset, name, format, top-1 accuracy, host.")
    w.add_argument("--arch", type=arg.preset_arg, metavar="PRESET", help="only this preset's entries")
    w = wsub.add_parser("show", parents=[with_json], help="one entry, every field",
                        description="Every field of one entry, its preprocessing in words, and where each fact "
                                    "came from.")
    w.add_argument("arch", type=arg.preset_arg, metavar="ARCH", help="the preset, e.g. resnet50")
    w.add_argument("name", type=arg.path_arg, metavar="NAME", help="the entry's name, e.g. torchvision/IMAGENET1K_V2")
    return parser
