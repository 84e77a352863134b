"""The training stack on the kernel backends (emulator; cupy, or the CuPy stand-in): Trainer epochs, bitwise
resume and CPU loading of a device model's checkpoint, and how often a training step waits on the device."""
import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.checkpoint import load_checkpoint
from gpunet.data import DataLoader, load_digits
from gpunet.models import build_model
from gpunet.training import TrainConfig, evaluate, run
from gpunet.training.trainer import Trainer

QUICK = dict(dataset="digits", limit_train=128, batch_size=32, optimizer="momentum")


def device_flag(backend) -> str:
    return "cuda" if backend.name == "cupy" else backend.name


def test_device_run_resumes_bitwise_and_its_checkpoint_loads_on_the_cpu(device_backend, tmp_path, monkeypatch):
    dev = device_flag(device_backend)
    straight = run(TrainConfig(epochs=2, device=dev, **QUICK), out_dir=tmp_path / "a", progress="none", log=None)
    real = Trainer.train_epoch

    def dies_in_epoch_2(self, loader, epoch, epochs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, loader, epoch, epochs)
    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(epochs=2, device=dev, **QUICK), out_dir=tmp_path / "b", progress="none", log=None)
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = run(TrainConfig(epochs=2), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz",
                  progress="none", log=None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(type(v) is np.ndarray for v in a.values())            # checkpoints hold host arrays
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    ck = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    cpu = get_backend("numpy")
    data = load_digits()
    model = build_model("cnn", data.in_shape, data.num_classes, seed=0, backend=cpu)
    model.load_state_dict(ck.model)
    test = DataLoader(data.x_test, data.y_test, 256, shuffle=False, backend=cpu)
    on_cpu = evaluate(model, test)
    assert abs(on_cpu["accuracy"] - straight.metrics["test_accuracy"]) <= 2 / len(data.y_test)
    assert abs(on_cpu["loss"] - straight.metrics["test_loss"]) <= 1e-4 * max(1.0, abs(on_cpu["loss"]))


@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_a_training_step_does_not_wait_on_the_device(device_backend, model):
    """As `gpunet train` runs it (labels validated once, upstream), a step never reads from the device: the losses
    come back once per epoch. The default loss's label-range check adds one read per step, by design. Each step
    copies one index array up (the data stays on the device). Counted on the CuPy stand-in, the only backend
    that sees every host read."""
    if "cupy_standin" not in getattr(device_backend.xp, "__file__", ""):
        pytest.skip("host reads are counted on the CuPy stand-in only (GPUNET_TEST_BACKENDS=standin)")
    import cupy_standin
    from gpunet import optim
    from gpunet.nn import SoftmaxCrossEntropy
    data = load_digits()
    counts = {}
    for check_range in (False, True):
        net = build_model(model, data.in_shape, data.num_classes, seed=0, backend=device_backend)
        trainer = Trainer(net, optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                          SoftmaxCrossEntropy(check_range=check_range), progress="none")
        for steps in (2, 6):
            loader = DataLoader(data.x_train[:32 * steps], data.y_train[:32 * steps], 32, seed=0,
                                backend=device_backend)
            trainer.train_epoch(loader, 1, 1)       # one-off costs: the data set's upload, kernel loading
            cupy_standin.reset_counts()
            trainer.train_epoch(loader, 1, 1)
            counts[check_range, steps] = dict(cupy_standin.COUNTS)
    assert counts[False, 2]["sync"] == counts[False, 6]["sync"] <= 2, counts     # per epoch, not per step
    assert counts[True, 6]["sync"] - counts[True, 2]["sync"] == 4, counts         # one label check per step
    assert counts[False, 6]["h2d"] - counts[False, 2]["h2d"] == 4, counts         # one index array per step


# Kernel launches of one training step (batch 8 / 4), as measured on the main branch before autograd (ffb0c3e,
# the same on the emulator and on the stand-in; docs/autograd.md): graph nodes must launch exactly these kernels.
STEP_LAUNCHES = {
    "cnn": {"bn_apply_f32": 3, "bn_bwd_dx_f32": 3, "bn_bwd_finalize_f32": 3, "bn_bwd_partial_f32": 3,
            "bn_stats_finalize_f32": 3, "bn_stats_partial_f32": 3, "conv2d_dgrad_f32": 2, "conv2d_fwd_f32": 3,
            "conv2d_wgrad_f32": 3, "conv2d_wgrad_reduce_f32": 3, "dropout_mask_f32": 1, "maxpool2d_bwd_f32": 2,
            "maxpool2d_fwd_f32": 2},
    "resnet-small": {"bn_apply_f32": 9, "bn_bwd_dx_f32": 9, "bn_bwd_finalize_f32": 9, "bn_bwd_partial_f32": 9,
                     "bn_stats_finalize_f32": 9, "bn_stats_partial_f32": 9, "conv2d_dgrad_f32": 8,
                     "conv2d_fwd_f32": 9, "conv2d_wgrad_f32": 9, "conv2d_wgrad_reduce_f32": 6},
}


@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_a_training_step_launches_the_same_kernels_as_before_autograd(device_backend, model, monkeypatch):
    """loss.backward() walks nodes that call the same launchers: per kernel, as many launches as the
    hand-written backward made (no dgrad for the data batch, no extra copies). Counted by the emulator's
    kernel objects, or by the CuPy stand-in."""
    import collections

    import gpunet
    if device_backend.name == "emulator":
        from gpunet.cuda.emulator import EmulatedKernel
        launches = collections.Counter()
        real = EmulatedKernel.__call__

        def counted(self, *args, **kwargs):
            launches[self.name] += 1
            return real(self, *args, **kwargs)
        monkeypatch.setattr(EmulatedKernel, "__call__", counted)
    elif "cupy_standin" in getattr(device_backend.xp, "__file__", ""):
        import cupy_standin
        launches = cupy_standin.LAUNCHES
    else:
        pytest.skip("launches are counted on the emulator and the CuPy stand-in")
    from gpunet import nn, optim
    shape, batch = {"cnn": ((1, 28, 28), 8), "resnet-small": ((3, 32, 32), 4)}[model]
    net = build_model(model, shape, 10, seed=0).to(device_backend).train()
    opt = optim.SGD(list(net.parameters()), lr=0.01, momentum=0.9)
    crit = nn.SoftmaxCrossEntropy(check_range=False)
    rng = np.random.default_rng(0)
    x = gpunet.tensor(rng.standard_normal((batch,) + shape).astype(np.float32), backend=device_backend)
    y = device_backend.asarray(rng.integers(0, 10, batch).astype(np.int64))

    def step():
        opt.zero_grad()
        crit(net(x), y).backward()
        opt.step()
    step()
    launches.clear()
    step()
    assert dict(launches) == STEP_LAUNCHES[model]
