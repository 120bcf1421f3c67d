"""compare --workers: the data-parallel trajectory (numerics/training_parity.py: parallel_trajectory).

Two workers with BN over the global batch give one worker's losses. The two-worker run is a fresh process, as
compare's worker starts it: flax and tensorflow set their devices up before the framework starts, which this
test process has done; torch's engine launches its worker processes from there.
"""

from __future__ import annotations

import json
import subprocess
import sys

from resnet_multi.numerics.training_parity import backend_trajectory

from .native_helpers import tiny

SCRIPT = """
import json, sys
from resnet_multi.arch.spec import spec_from_dict
from resnet_multi.numerics.training_parity import parallel_trajectory
backend, spec = sys.argv[1], spec_from_dict(json.loads(sys.argv[2]))
print(json.dumps(parallel_trajectory(backend, spec, None, 3, 0, (3, 12, 12), batch=8, workers=2, sync_bn=True,
                                     lr=0.05, device="cpu")))
"""


def test_two_workers_with_sync_bn_give_one_workers_losses(backend, face):
    spec = tiny("resnet20")
    done = subprocess.run([sys.executable, "-c", SCRIPT, backend, json.dumps(spec.to_dict())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout.strip().splitlines()[-1])
    one = backend_trajectory(backend, spec, None, 3, 0, (3, 12, 12), batch=8, lr=0.05, device="cpu")
    assert two["workers"] == 2 and two["sync_bn"] is True and two["engine"] and len(two["losses"]) == 3
    assert one["losses"][0] != one["losses"][2]  # the steps move the weights (lr 0.05)
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (one["losses"], two["losses"])
    assert set(two["fingerprint"]) == set(one["fingerprint"])
