"""gpunet.summary: parameter counts against sum(p.size), multiply-adds and output shapes against torchinfo on the
PyTorch twin of every built-in model, activation bytes by hand, and the model left as it was."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.cli.main import main
from gpunet.models import MODELS, build_model

SHAPES = {"cnn": (1, 8, 8), "lenet": (1, 28, 28), "lenet5-classic": (1, 28, 28), "vgg": (3, 32, 32), "alexnet": (1, 28, 28),
          "inception": (1, 8, 8), "resnet-small": (3, 32, 32), "mlp": (1, 8, 8)}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_totals_equal_the_sum_of_parameter_sizes(name):
    model = build_model(name, SHAPES[name], 10, seed=0)
    s = gpunet.summary(model, SHAPES[name])
    assert s.totals["trainable"] + s.totals["frozen"] == sum(p.size for p in model.parameters())
    assert s.totals["frozen"] == 0


def test_frozen_parameters_are_counted_apart_and_a_shared_layer_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    model[3].weight.requires_grad = False
    s = gpunet.summary(model, (4,), batch_size=3)
    assert s.totals["frozen"] == 8 and s.totals["trainable"] == 20 + 2
    assert [r["path"] for r in s.rows] == ["", "0", "1", "0", "3"]  # the shared layer appears at each call
    assert s.totals["mult_adds"] == 3 * 20 * 2 + 3 * 10  # Linear: rows x weights, per call


def test_totals_count_the_parameters_of_modules_the_forward_never_calls():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 2), nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)
    s = gpunet.summary(Head(), (4,))
    assert s.totals["trainable"] == 10 + 15 and "spare" not in [r["path"] for r in s.rows]


def test_activation_bytes_are_what_the_nodes_save():
    # Linear saves its input x (5x4 float32 = 80 B; its weight is not an activation), ReLU its output (5x3 = 60 B)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    s = gpunet.summary(model, (4,), batch_size=5)
    by_path = {r["path"]: r for r in s.rows}
    assert by_path["0"]["activation_bytes"] == 80 and by_path["1"]["activation_bytes"] == 60
    assert s.totals["activation_bytes"] == 140


def test_summary_leaves_the_model_as_it_was():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    counters = [m.counter for m in model.modules() if isinstance(m, nn.Dropout)]
    gpunet.summary(model, (1, 8, 8), batch_size=4)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert counters == [m.counter for m in model.modules() if isinstance(m, nn.Dropout)]
    assert not model.training


@pytest.mark.parametrize("name", MODELS)
def test_mult_adds_and_output_shapes_match_torchinfo_on_the_torch_twin(name):
    torch = pytest.importorskip("torch")
    torchinfo = pytest.importorskip("torchinfo")
    from gpunet.bench.torch_twin import torch_twin
    model = build_model(name, SHAPES[name], 10, seed=0)
    ours = gpunet.summary(model, SHAPES[name], batch_size=2)
    twin = torch_twin(model, torch)
    theirs = torchinfo.summary(twin, input_size=(2,) + SHAPES[name], verbose=0)
    paths = {id(m): p for p, m in twin.named_modules()}
    leaves = {paths[id(li.module)]: li for li in theirs.summary_list if not list(li.module.children())}
    rows = {r["path"]: r for r in ours.rows if r["path"] in leaves}
    assert rows.keys() == leaves.keys()
    for path, li in leaves.items():
        assert rows[path]["output_shape"] == list(li.output_size), path
        assert rows[path]["mult_adds"] == li.macs, path
    assert ours.totals["mult_adds"] == theirs.total_mult_adds
    assert ours.totals["trainable"] == theirs.trainable_params


def test_summary_table_prints_and_converts():
    s = gpunet.summary(build_model("mlp", (1, 8, 8), 10, seed=0), (1, 8, 8))
    text = str(s)
    assert "Linear" in text and "total: " in text and s.totals_line() in text
    d = s.to_dict()
    assert d["totals"]["trainable"] == s.totals["trainable"] and len(d["rows"]) == len(s.rows)


def test_cli_summary_prints_the_table(capsys):
    assert main(["summary", "--model", "lenet", "--dataset", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "lenet on mnist (1, 28, 28)" in out and "61,706 parameters" in out


def test_summary_on_a_device_matches_numpy(device_backend):
    ours = gpunet.summary(build_model("cnn", (1, 8, 8), 10, seed=0, backend=device_backend), (1, 8, 8), 2)
    ref = gpunet.summary(build_model("cnn", (1, 8, 8), 10, seed=0), (1, 8, 8), 2)
    strip = [{k: v for k, v in r.items() if k != "activation_bytes"} for r in ref.rows]
    assert [{k: v for k, v in r.items() if k != "activation_bytes"} for r in ours.rows] == strip
    assert ours.totals["activation_bytes"] > 0
