"""Cross-environment interop: zoo checkpoints made in one framework run in all four.

Run by ``nox -s interop`` (after the backend sessions built their
environments). For each source, in the source framework's environment: build
the framework's own model (random weights, random BN statistics), save it in
its own format, record its logits on an odd-sized input, and convert it to a
canonical file. Then, in every backend's environment: load the canonical
file into our model and compare its logits with the source model's.

    python tests/cross_env/run.py OUT_DIR   # exits 1 if any backend differs
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("torch", "tensorflow", "flax", "mxnet")
SOURCES = {  # name: (environment, our preset)
    "torchvision_resnet50": ("torch", "resnet50"),
    "keras_resnet50v2": ("tensorflow", "resnet50_v2"),
    "gluon_resnet50_v1": ("mxnet", "gluon_resnet50_v1"),
}

MAKE = r'''
import sys, numpy as np
name, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(1)
x = np.random.default_rng(0).standard_normal((2, 3, 65, 63)).astype(np.float32)
if name == "torchvision_resnet50":
    import torch, torchvision
    m = torchvision.models.resnet50().eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            for t, lo, hi in ((mod.running_mean, -.2, .2), (mod.running_var, .5, 2), (mod.weight.data, .5, 1.5), (mod.bias.data, -.2, .2)):
                t.copy_(torch.from_numpy(rng.uniform(lo, hi, t.shape).astype(np.float32)))
    with torch.no_grad():
        logits = m(torch.from_numpy(x)).numpy()
    src, fmt = out + "/src.pth", "torch"
    torch.save(m.state_dict(), src)
elif name == "keras_resnet50v2":
    import os; os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    m = keras.applications.ResNet50V2(weights=None, input_shape=(65, 63, 3), classifier_activation=None)
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(lo, hi, w.shape).astype(np.float32)
                               for w, (lo, hi) in zip(layer.get_weights(), ((.5, 1.5), (-.2, .2), (-.2, .2), (.5, 2)))])
    logits = np.asarray(m(x.transpose(0, 2, 3, 1), training=False))
    src, fmt = out + "/src.weights.h5", "keras-applications"
    m.save_weights(src)
else:
    import mxnet as mx
    m = mx.gluon.model_zoo.vision.resnet50_v1(pretrained=False)
    m.initialize(mx.init.Xavier())
    m(mx.nd.array(x))
    for key, p in m.collect_params().items():
        for suffix, (lo, hi) in (("running_mean", (-.2, .2)), ("running_var", (.5, 2)), ("gamma", (.5, 1.5)), ("beta", (-.2, .2))):
            if key.endswith(suffix):
                p.set_data(mx.nd.array(rng.uniform(lo, hi, p.shape)))
    logits = m(mx.nd.array(x)).asnumpy()
    src, fmt = out + "/src.params", "gluon-zoo"
    m.save_parameters(src)
np.save(out + "/x.npy", x)
np.save(out + "/logits.npy", logits)
print(src, fmt)
'''

CHECK = r'''
import sys, json, numpy as np, resnet_multi
arch, folder, backend = sys.argv[1:4]
x, want = np.load(folder + "/x.npy"), np.load(folder + "/logits.npy")
m = resnet_multi.build(arch, backend=backend, device="cpu")
resnet_multi.load_weights(m, folder + "/canonical.safetensors")
got = resnet_multi.backend(backend).forward(m, x)
print(json.dumps({"max_abs_diff": float(np.abs(got - want).max()), "tolerance": 1e-4 * max(1.0, float(np.abs(want).max()))}))
'''


def python(backend: str) -> str:
    return str(ROOT / ".nox" / backend / "bin" / "python")


def main(out_dir: str) -> int:
    out = Path(out_dir)
    ok = True
    for name, (env, arch) in SOURCES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([python(env), "-c", MAKE, name, str(folder)], capture_output=True, text=True)
        if made.returncode != 0:
            print(f"{name}: making the source in {env} failed: {made.stderr.strip().splitlines()[-1:]}")
            ok = False
            continue
        src, fmt = made.stdout.split()[-2:]
        conv = subprocess.run([python(env), "-m", "resnet_multi", "convert", src, str(folder / "canonical.safetensors"),
                               "--arch", arch, "--from", fmt], capture_output=True, text=True)
        if conv.returncode != 0:
            print(f"{name}: convert failed: {conv.stderr.strip()}")
            ok = False
            continue
        for backend in BACKENDS:
            run = subprocess.run([python(backend), "-c", CHECK, arch, str(folder), backend], capture_output=True,
                                 text=True)
            if run.returncode != 0:
                print(f"{name} -> {backend}: FAILED to run: {run.stderr.strip().splitlines()[-1:]}")
                ok = False
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            good = r["max_abs_diff"] <= r["tolerance"]
            ok &= good
            print(f"{name} ({env}) -> our {arch} in {backend}: logits max |diff| {r['max_abs_diff']:.2e} "
                  f"(tolerance {r['tolerance']:.1e}) {'ok' if good else 'FAIL'}")
    print(f"{'1 passed, 0 failed' if ok else '0 passed, 1 failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "cross_env_out"))
