"""gpunet.threads: idle thread pools are told to sleep soon (set before each library starts), a value
the user set wins, and a pool that started before gpunet is reported, not silently assumed."""
import os
import subprocess
import sys

import pytest

from gpunet import onednn

PROBE = ("import os, json; {pre}import gpunet; from gpunet.threads import pool_policy; {post}"
         "print(json.dumps([os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('GOMP_SPINCOUNT'), "
         "pool_policy()]))")


def _probe(pre: str = "", post: str = "", **env):
    import json
    e = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre, post=post)], env=e, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_gpunet_imported_first_sets_the_openblas_idle_timeout():
    blas, gomp, policy = _probe()
    assert blas == "4" and policy["OPENBLAS_THREAD_TIMEOUT"] == "4 (set by gpunet)"
    assert gomp is None and "GOMP_SPINCOUNT" not in policy   # oneDNN (and libgomp) not loaded yet


def test_a_value_the_user_set_wins():
    blas, _, policy = _probe(OPENBLAS_THREAD_TIMEOUT="10")
    assert blas == "10" and policy["OPENBLAS_THREAD_TIMEOUT"] == "10 (set by the user)"


def test_numpy_imported_first_is_reported_not_changed():
    blas, _, policy = _probe(pre="import numpy; ")
    assert blas is None
    assert "started before gpunet was imported" in policy["OPENBLAS_THREAD_TIMEOUT"]
    assert "OPENBLAS_THREAD_TIMEOUT=4" in policy["OPENBLAS_THREAD_TIMEOUT"]   # the fix is named


@pytest.mark.skipif(not onednn.available(), reason=f"oneDNN unavailable: {onednn.status_line()}")
def test_loading_onednn_sets_the_openmp_spin_count_first():
    _, gomp, policy = _probe(post="from gpunet import onednn; onednn.available(); ")
    assert gomp == "30000" and policy["GOMP_SPINCOUNT"] == "30000 (set by gpunet)"


@pytest.mark.skipif(not onednn.available(), reason=f"oneDNN unavailable: {onednn.status_line()}")
def test_a_user_wait_policy_is_left_alone():
    _, gomp, policy = _probe(post="from gpunet import onednn; onednn.available(); ", OMP_WAIT_POLICY="PASSIVE")
    assert gomp is None and "OMP_WAIT_POLICY=PASSIVE" in policy["GOMP_SPINCOUNT"]


def test_bench_peer_process_gets_the_environment_without_gpunets_defaults(monkeypatch):
    """`gpunet bench --isolated`: PyTorch's process must run with its own thread-pool defaults."""
    from gpunet import threads
    from gpunet.bench.isolated import _side_env
    monkeypatch.setitem(threads._policy, "GOMP_SPINCOUNT", "30000 (set by gpunet)")
    monkeypatch.setenv("GOMP_SPINCOUNT", "30000")
    assert "GOMP_SPINCOUNT" not in _side_env("torch")
    assert _side_env("gpunet")["GOMP_SPINCOUNT"] == "30000"
