"""gpunet.ops.numpy.malloc: the NumPy backend fixes glibc's malloc thresholds so freed activations are reused
instead of being faulted in again. Process-wide, so each case runs in a fresh interpreter."""
import json
import subprocess
import sys

import pytest

from gpunet.ops.numpy import malloc as _malloc

_PROBE = r"""
import json, resource, numpy as np
from gpunet.backend import get_backend
from gpunet.ops.numpy.malloc import malloc_state
ops = get_backend("numpy").ops  # creating the NumPy ops applies the tuning (unless switched off)
rng = np.random.default_rng(0)
x, dy = rng.standard_normal((2, 64, 32, 16, 16), dtype=np.float32)
g, b, rm, rv = np.ones(32, np.float32), np.zeros(32, np.float32), np.zeros(32, np.float32), np.ones(32, np.float32)
def step():  # a batch-norm forward+backward: 2 MB arrays made and freed in an order that keeps
    y, mean, invstd = ops.batch_norm_train(x, g, b, rm, rv, 0.1, 1e-5)  # untuned glibc unmapping them
    ops.batch_norm_backward(dy, x, g, mean, invstd)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"state": malloc_state(), "faults_per_step": faults}))
"""


def _probe(env_extra):
    import os
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_malloc._glibc()[0] is None, reason="glibc only")
def test_tuned_malloc_reuses_freed_arrays_without_page_faults():
    res = _probe({})
    assert res["state"]["applied"] is True
    assert res["state"]["mmap_threshold"] == _malloc.MMAP_THRESHOLD
    # 2 x 2 MB made and freed per step: faulting them in again is ~1,000 faults of 4 KiB pages
    assert res["faults_per_step"] < 50, res


def test_tuning_can_be_switched_off():
    res = _probe({"GPUNET_MALLOC_TUNING": "0"})
    assert res["state"] == {"applied": False, "reason": "GPUNET_MALLOC_TUNING=0"}
    if _malloc._glibc()[0] is not None:  # the same steps untuned fault their arrays in again (the why)
        assert res["faults_per_step"] > 500, res
