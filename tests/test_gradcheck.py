"""gradcheck itself: it passes correct gradients, catches wrong ones (naming the worst element), and
leaves the caller's model and inputs alone."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.autograd import Node, functions
from gpunet.autograd.tensor_ops import ReLU
from gpunet.gradcheck import GradcheckError, gradcheck


class ScaledReLUNode(ReLU):
    """A ReLU node whose backward is 10% too large: gradcheck must notice."""

    def backward(self, gy):
        return 1.1 * super().backward(gy)


class ScaledReLU(nn.ReLU):
    def forward(self, x):
        return ScaledReLUNode()(x)


class HalfBiasLinearNode(functions.Linear):
    def backward(self, gy):
        dx, dw, db = super().backward(gy)
        return dx, dw, db * 0.5


class BadBiasLinear(nn.Linear):
    def forward(self, x):
        return HalfBiasLinearNode()(x, self.weight, self.bias)


class TwiceSquare(Node):
    def forward(self, a):
        self.a = a
        return a * a

    def backward(self, gy):
        return gy * self.a  # should be 2 * gy * a


def test_passes_and_reports_every_tensor(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    report = gradcheck(model, rng.standard_normal((2, 3)).astype(np.float32))
    assert report.ok
    assert [c.name for c in report.checks] == ["input", "0.weight", "0.bias", "2.weight", "2.bias"]
    assert [c.checked for c in report.checks] == [6, 12, 4, 8, 2]
    assert max(c.max_rel_err for c in report.checks) < 1e-6
    assert "gradcheck Sequential: passed" in str(report)


def test_catches_a_wrong_input_gradient(rng):
    x = np.abs(rng.standard_normal((2, 3))) + 0.1
    with pytest.raises(GradcheckError, match=r"FAIL input\[\d, \d\] of \(2, 3\): analytic .* vs numeric") as e:
        gradcheck(ScaledReLU(), x)
    worst = e.value.report.worst
    assert worst.name == "input" and worst.analytic == pytest.approx(1.1 * worst.numeric, rel=1e-6)
    assert worst.max_rel_err == pytest.approx(0.1 / 1.1, rel=1e-4)


def test_catches_a_wrong_parameter_gradient(rng):
    report = gradcheck(BadBiasLinear(3, 2), rng.standard_normal((4, 3)), raise_exception=False)
    assert not report.ok
    assert {c.name: c.ok for c in report.checks} == {"input": True, "weight": True, "bias": False}
    assert report.worst.name == "bias" and "FAILED" in str(report)


def test_leaves_the_callers_model_and_inputs_alone(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
    before = model.state_dict()
    seed, counter = model[2].seed, model[2].counter
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    x0 = x.copy()
    gradcheck(model, x)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model[0].weight.data.dtype == np.float32 and model[0].weight.grad is None
    assert (model[2].seed, model[2].counter) == (seed, counter)
    np.testing.assert_array_equal(x, x0)


def test_frozen_parameters_are_not_checked(rng):
    layer = nn.Linear(2, 2)
    layer.weight.requires_grad = False
    assert [c.name for c in gradcheck(layer, rng.standard_normal((1, 2))).checks] == ["input", "bias"]


def test_max_checks_samples_elements(rng):
    report = gradcheck(nn.Linear(10, 10), rng.standard_normal((5, 10)), max_checks=7)
    assert all(c.checked == min(7, int(np.prod(c.shape))) for c in report.checks)


def test_function_pairs_check_every_floating_input(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    report = gradcheck((lambda u, v: u * v, lambda dy: (dy * b, dy * a)), (a, b))
    assert [c.name for c in report.checks] == ["input0", "input1"]
    with pytest.raises(GradcheckError, match="FAIL input1"):
        gradcheck((lambda u, v: u * v, lambda dy: (dy * b, dy * b)), (a, b))


def test_rejects_what_it_cannot_check():
    with pytest.raises(TypeError, match="target must be a Module, a loss, a function of tensors"):
        gradcheck(3, np.ones(2))
    with pytest.raises(AssertionError, match="does not depend on anything that requires grad"):
        gradcheck(lambda x: x.detach() * 2, np.ones(2))


def test_functions_of_tensors_check_every_floating_input(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    report = gradcheck(lambda u, v: (u @ v).tanh(), (a, b))
    assert [c.name for c in report.checks] == ["input0", "input1"] and report.ok
    with pytest.raises(GradcheckError, match=r"FAIL input\["):
        gradcheck(lambda u: TwiceSquare()(u).sum(axis=0), rng.standard_normal((3, 2)))
