"""Device parity: train the same model on NumPy and on another device, step by step, and compare.

    report = run_parity("cnn", "emulator", steps=3)      # or a factory: run_parity(my_net, "cuda", in_shape=...)
    print(report.table()); assert report.passed

    report = run_parity("cnn", "cpu", cpu_engine="onednn")  # the CPU backend's oneDNN engine, same check

The reference is the CPU backend on its NumPy engine, pinned whatever GPUNET_CPU_ENGINE says: the other
engine (oneDNN) is one of the things compared with it, like a device.

The model is built once on NumPy (the reference) and once more with the same seed; the second copy
gets the first one's `state_dict()` (and its dropout seeds, which are not state) and moves to the
device. Both then run K identical training steps on the same batches: forward, softmax cross-entropy,
`loss.backward()`, optimizer step. Every module's forward output and the gradient w.r.t. its input are
captured by wrapping the module's `forward` on the instance (the input passes through a recording
identity node; gpunet.nn is not modified), and after each step every parameter, gradient and buffer is
compared.

Differences. For a reference array `a` and the device's `b`:
    max_abs = max |a - b|,   max_rel = max_abs / (max |a| + tiny)
normalised by the largest reference magnitude of the whole tensor, not element-wise, so elements near
zero (where element-wise relative error means nothing) cannot fail a row. A row passes when
max_rel <= tol or max_abs <= atol (the absolute floor is for tensors that are zero in exact arithmetic,
such as a mean gradient that cancels, and are pure rounding noise on both devices). Each row keeps
its worst step (largest max_rel / tol). Non-finite values or a shape mismatch always fail.

Tolerances (the table is TOLERANCES; the reasons are in docs/parity.md). float32 results are not
bit-identical across devices: a tiled GEMM and a BLAS sum the same products in different orders
(different roundings, each within K*u of the exact sum, u = 2**-24), batch-norm backward subtracts
nearly equal numbers, and each step's weight differences feed the next step, so errors grow with
depth and with the step count. The tolerance at step k (1-based) is k * tol(quantity). float64 runs
the same kernels with u = 2**-53: its tolerances are about eight orders of magnitude tighter.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpunet.autograd import Node, Tensor
from gpunet.backend import Backend, get_backend, resolve_name

# Relative tolerance at step 1, per quantity and dtype (step k allows k times as much), and the
# absolute floor per dtype. Measured margins and the reasoning: docs/parity.md.
TOLERANCES = {
    "float32": {"loss": 1e-5, "activation": 1e-4, "grad_input": 1e-4, "grad": 1e-4, "param": 1e-4,
                "buffer": 1e-4},
    "float64": {"loss": 1e-10, "activation": 1e-10, "grad_input": 1e-10, "grad": 1e-10, "param": 1e-10,
                "buffer": 1e-10},
}
ATOL = {"float32": 1e-8, "float64": 1e-16}
TINY = 1e-30  # keeps max_rel finite for an all-zero reference
# Adam divides each element's step by that element's own gradient magnitude, so an element whose gradient
# is within rounding of zero can move by up to about lr differently on two devices, every step. With Adam,
# parameter rows therefore also pass when max_abs <= ADAM_PARAM_ATOL * lr * step (gradients, activations
# and buffers keep their tolerances and still catch kernel bugs).
ADAM_PARAM_ATOL = 1.0

OPTIMIZERS = ("sgd", "momentum", "adam")
# Learning rates in the stable regime for the small models on digits: a diverging run amplifies every
# rounding difference and says little about the kernels.
DEFAULT_LR = {"sgd": 0.05, "momentum": 0.01, "adam": 1e-3}
RANDOM_IN_SHAPE = (1, 8, 8)  # the seeded batch used with a model factory: digits-sized images
RANDOM_CLASSES = 10


@dataclass
class ParityRow:
    """One compared quantity: its worst step and that step's differences and tolerance."""
    layer: str          # module path ("0", "3.body.1"), "(model)" for the whole model, "(loss)"
    module: str         # module type ("Conv2d"), "" for the loss
    quantity: str       # "output", "grad_input", "weight.grad", "weight", "running_mean", "loss"
    kind: str           # tolerance class: loss, activation, grad_input, grad, param, buffer
    max_abs: float
    max_rel: float
    tol: float          # relative tolerance at `step`
    atol: float
    passed: bool
    step: int           # 1-based step where the row came closest to failing (or first failed)
    scale: float        # max |reference| at that step

    @property
    def ratio(self) -> float:
        """How much of its allowance the row uses: min(max_rel / tol, max_abs / atol); <= 1 passes."""
        return _ratio(self)

    @property
    def label(self) -> str:
        return f"{self.layer} {self.module}".rstrip()


@dataclass
class ParityReport:
    """Result of `run_parity`. `passed` is True when every row passed."""
    model: str
    device: str
    reference: str
    dtype: str
    steps: int
    batch_size: int
    seed: int
    optimizer: str
    lr: float
    data: str
    lockstep: bool = False
    rows: list = field(default_factory=list)
    history: list = field(default_factory=list)     # per step: {"step": k, kind: largest max_rel, ...}
    kink_flips: dict = field(default_factory=dict)  # {step: {"layer Module": n}}: n outputs 0 on one side only
    seconds: dict = field(default_factory=dict)   # {"reference": s, "device": s, "total": s}
    losses: dict = field(default_factory=dict)    # {"reference": [...], "device": [...]} per step

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if not r.passed]

    def worst(self, kind: str | None = None) -> ParityRow | None:
        """The row closest to failing (largest `ratio`), of one kind when given."""
        rows = [r for r in self.rows if kind is None or r.kind == kind]
        return max(rows, key=_ratio, default=None)

    def max_diffs(self) -> dict:
        """{kind: (max_abs, max_rel)} over all rows of each kind."""
        out = {}
        for r in self.rows:
            a, b = out.get(r.kind, (0.0, 0.0))
            out[r.kind] = (_nanmax(a, r.max_abs), _nanmax(b, r.max_rel))
        return out

    def summary(self) -> str:
        what = (f"{self.model}, {self.device} vs {self.reference}, {self.dtype}, {self.steps} step(s) of "
                f"{self.optimizer} (lr {self.lr:g}{', lockstep' if self.lockstep else ''}), batch {self.batch_size}, "
                f"seed {self.seed}, {self.data} data")
        secs = self.seconds
        timing = (f"{secs.get('total', 0):.1f}s ({self.reference} {secs.get('reference', 0):.1f}s, "
                  f"{self.device} {secs.get('device', 0):.1f}s)")
        if self.passed:
            return f"PASS: all {len(self.rows)} rows within tolerance ({what}) in {timing}"
        first = min(self.failures, key=lambda r: r.step)
        return (f"FAIL: {len(self.failures)} of {len(self.rows)} rows out of tolerance ({what}); first at step "
                f"{first.step}: {first.label} {first.quantity} max_rel {first.max_rel:.3g} > tol {first.tol:.3g}; "
                f"in {timing}" + self._kink_hint(first.step))

    def _kink_hint(self, step: int) -> str:
        """Explain a failure that starts where an activation crossed zero on one device only."""
        flips = {s: f for s, f in self.kink_flips.items() if s <= step}
        forward_failed = any(not r.passed and r.kind == "activation" and r.step < step for r in self.rows)
        if not flips or forward_failed:
            return ""
        s = min(flips)
        where = ", ".join(f"{k}: {n}" for k, n in list(flips[s].items())[:3])
        advice = ("try another --seed" if self.lockstep else
                  "--lockstep compares every step from identical weights")
        return (f"\nnote: at step {s} some activations were exactly 0 on one device only ({where}): rounding carried "
                f"a pre-activation across a ReLU's kink, which switches that element's gradient on or off. While the "
                f"forward rows agree this is expected float behaviour after several free-running steps, not a kernel "
                f"bug; {advice}")

    def table(self, only_failures: bool = False) -> str:
        rows = self.failures if only_failures else self.rows
        head = ("layer", "quantity", "max_abs", "max_rel", "tol", "atol", "step", "result")
        body = [(r.label, r.quantity, _fmt(r.max_abs), _fmt(r.max_rel), _fmt(r.tol, "exact"),
                 _fmt(r.atol, "-"), str(r.step), "PASS" if r.passed else "FAIL") for r in rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = (lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [{**{k: _json_num(v) for k, v in asdict(r).items()}, "ratio": _json_num(r.ratio)}
                     for r in self.rows]
        d["losses"] = {k: [_json_num(x) for x in v] for k, v in self.losses.items()}
        d["history"] = [{k: _json_num(v) for k, v in h.items()} for h in self.history]
        d["kink_flips"] = {str(k): v for k, v in self.kink_flips.items()}
        d["passed"] = self.passed
        d["tolerances"] = {"relative_at_step_1": TOLERANCES[self.dtype], "atol": ATOL[self.dtype],
                           "growth": "tolerance at step k = k * relative_at_step_1"}
        return d

    def save_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _ratio(r: ParityRow) -> float:
    if not math.isfinite(r.max_abs):
        return math.inf
    if r.max_abs == 0:
        return 0.0
    rel = r.max_rel / r.tol if r.tol > 0 else math.inf
    return min(rel, r.max_abs / r.atol if r.atol > 0 else math.inf)


def _nanmax(a: float, b: float) -> float:
    """max that propagates NaN (a NaN row must not vanish from a summary)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _fmt(v: float, zero: str = "0") -> str:
    return zero if v == 0 else f"{v:.2e}"


def _json_num(v):
    """JSON has no NaN/inf: NaN becomes null, infinities the strings "inf"/"-inf"."""
    if not isinstance(v, float) or math.isfinite(v):
        return v
    return None if math.isnan(v) else ("inf" if v > 0 else "-inf")


# --- comparing arrays ----------------------------------------------------------------------------------

def diff(ref, got) -> tuple[float, float, float]:
    """(max_abs, max_rel, scale) with max_rel = max|ref - got| / (max|ref| + tiny), in float64.
    A shape mismatch gives inf; any NaN/inf on either side gives NaN (a failure)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return math.inf, math.inf, math.nan
    if ref.size == 0:
        return 0.0, 0.0, 0.0
    r, g = ref.astype(np.float64), got.astype(np.float64)
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        return math.nan, math.nan, math.nan
    max_abs = float(np.max(np.abs(r - g)))
    scale = float(np.max(np.abs(r)))
    return max_abs, max_abs / (scale + TINY), scale


class _Tracker:
    """Keeps, per row key, the worst step seen so far. `param_atol_per_step`: the extra absolute allowance
    of parameter rows per step (Adam's, see ADAM_PARAM_ATOL)."""

    def __init__(self, tolerances: dict, atol: float, param_atol_per_step: float = 0.0, growth: bool = True):
        self.tolerances, self.atol, self.param_atol_per_step = tolerances, atol, param_atol_per_step
        self.growth = growth  # tolerances grow k-fold by step k (free-running), or stay (lockstep)
        self.rows: dict[tuple, ParityRow] = {}
        self.step_max: dict[str, float] = {}  # this step's largest max_rel per kind

    def add(self, step: int, layer: str, module: str, quantity: str, kind: str, ref, got, exact=False):
        max_abs, max_rel, scale = diff(ref, got)
        k = step if self.growth else 1
        tol = 0.0 if exact else self.tolerances[kind] * k
        atol = 0.0 if exact else max(self.atol, self.param_atol_per_step * k if kind == "param" else 0.0)
        ok = math.isfinite(max_abs) and (max_rel <= tol or max_abs <= atol)
        row = ParityRow(layer, module, quantity, kind, max_abs, max_rel, tol, atol, ok, step, scale)
        self.step_max[kind] = _nanmax(self.step_max.get(kind, 0.0), max_rel)
        key = (layer, quantity)
        old = self.rows.get(key)
        if old is None or (old.passed and not ok) or (old.passed == ok and ok and _ratio(row) > _ratio(old)):
            self.rows[key] = row  # keep the first failure, else the step closest to failing


# --- capturing module outputs and input gradients ---------------------------------------------------

class _Tap(Node):
    """Identity whose backward records the gradient passing through it (a module's input gradient)."""

    def __init__(self, record):
        self.record = record

    def forward(self, x):
        return x

    def backward(self, gy):
        self.record(gy)
        return gy


@contextlib.contextmanager
def capture(model, store: dict):
    """Record host copies of every module's forward output (store[(path, "output")]) and of the gradient that
    reaches its input in backward (store[(path, "grad_input")]): `forward` is wrapped on each instance to run
    the input through a recording identity node; removed on exit."""
    be = model.backend
    wrapped = []

    def host(a):
        return np.array(be.asnumpy(a), copy=True)

    def wrap(m, path):
        fwd = m.forward

        def record(gy):
            store[(path, "grad_input")] = host(gy)

        def forward(x, *args, **kwargs):
            if isinstance(x, Tensor) and x.requires_grad:
                x = _Tap(record)(x)
            y = fwd(x, *args, **kwargs)
            store[(path, "output")] = host(y.data)
            return y

        m.__dict__["forward"] = forward  # an instance attribute shadows the method
        wrapped.append(m)

    try:
        for path, m in model.named_modules():
            wrap(m, path or "(model)")
        yield store
    finally:
        for m in wrapped:
            m.__dict__.pop("forward", None)


# --- models and data --------------------------------------------------------------------------------

def _build(model, in_shape, num_classes, seed):
    """A fresh model on NumPy, weights drawn from the NumPy generator reseeded with `seed`."""
    from gpunet.models import build_model
    if isinstance(model, str):
        return build_model(model, in_shape, num_classes, seed=seed)
    get_backend("numpy").seed(seed)
    m = model(tuple(in_shape), int(num_classes))
    from gpunet.nn import Module
    if not isinstance(m, Module):
        raise TypeError(f"parity: the model factory returned {type(m).__name__}, not a gpunet.nn.Module")
    return m


def _twin(model, in_shape, num_classes, seed, reference: Backend, device: Backend, dtype):
    """(the model on `reference`, the same model on `device`), with identical weights, buffers and dropout seeds."""
    from gpunet.nn import Dropout
    ref = _build(model, in_shape, num_classes, seed)
    dev = _build(model, in_shape, num_classes, seed + 1)  # a different draw: load_state_dict must do the work
    dev.load_state_dict(ref.state_dict())
    dev_mods = dict(dev.named_modules())
    for path, m in ref.named_modules():
        if isinstance(m, Dropout):  # the mask seed is an attribute, not state: copy it
            dev_mods[path].seed, dev_mods[path].counter = m.seed, m.counter
    ref.to(reference, dtype)
    dev.to(device, dtype)
    return ref.train(), dev.train()


def _batches(data: str, steps: int, batch_size: int, seed: int, in_shape, num_classes):
    """(description, in_shape, num_classes, list of (x, y) host batches)."""
    if data == "digits":
        from gpunet.data import DataLoader, load_digits
        ds = load_digits()
        loader = DataLoader(ds.x_train, ds.y_train, batch_size, shuffle=True, seed=seed, drop_last=True)
        out = []
        while len(out) < steps:
            out.extend(b for _, b in zip(range(steps - len(out)), loader))
        return "digits", ds.in_shape, ds.num_classes, out
    if data == "random":
        in_shape = tuple(in_shape or RANDOM_IN_SHAPE)
        num_classes = int(num_classes or RANDOM_CLASSES)
        rng = np.random.default_rng([seed, 7])
        out = [(rng.standard_normal((batch_size,) + in_shape).astype(np.float32),
                rng.integers(0, num_classes, batch_size).astype(np.int64)) for _ in range(steps)]
        return "random (seeded)", in_shape, num_classes, out
    raise ValueError(f"parity: data must be 'digits' or 'random', got {data!r}")


def _optimizer(name: str, params, lr: float):
    from gpunet import optim
    if name == "sgd":
        return optim.SGD(params, lr=lr)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    raise ValueError(f"parity: unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def resolve_device(device, no_gpu: str = "emulator", cpu_engine: str | None = None) -> Backend:
    """A Backend for `device`. "auto" means what it means everywhere (gpunet.backend: CUDA when usable,
    else NumPy); when it finds no GPU, parity compares `no_gpu` instead ("emulator": the CPU emulator of
    our kernels, the default; "numpy": the CPU backend). `cpu_engine` is the CPU backend's engine
    (numpy|onednn|auto; None: GPUNET_CPU_ENGINE, else auto, as everywhere); naming one for a device that
    is not the CPU is an error rather than ignored, so a check never silently compares something else."""
    if isinstance(device, Backend):
        if cpu_engine is not None:
            raise ValueError(f"parity: cpu_engine={cpu_engine!r} applies to a device name, not to a given "
                             f"{device!r}, which has its own engine (get_backend('cpu', cpu_engine=...))")
        return device
    key, why = resolve_name(device)
    if key == "numpy" and why.startswith("auto"):
        key, why = resolve_name(no_gpu)[0], f"no usable GPU, and no_gpu={no_gpu!r} (--no-gpu) picks it"
    if cpu_engine is not None and key != "numpy":
        raise ValueError(f"parity: a CPU engine (cpu_engine={cpu_engine!r}, --cpu-engine) applies to the CPU "
                         f"device only, but device {device!r} is {key} ({why}); use device 'cpu' (--device cpu)")
    return get_backend(key, cpu_engine=cpu_engine)


def label(backend: Backend) -> str:
    """A backend's name in reports. The CPU backend names its engine when it is not the NumPy reference's:
    "cpu (engine onednn)" and the reference "numpy" are one backend kind on two engines."""
    engine = getattr(backend, "cpu_engine", None)
    if backend.name == "numpy" and engine not in (None, "numpy"):
        return f"cpu (engine {engine})"
    return backend.name


# --- the run --------------------------------------------------------------------------------------

def run_parity(model="cnn", device="auto", steps: int = 3, *, batch_size: int = 16, seed: int = 0,
               dtype="float32", optimizer: str = "momentum", lr: float | None = None, data: str | None = None,
               in_shape=None, num_classes=None, batches=None, tolerances: dict | None = None,
               tol_scale: float = 1.0, lockstep: bool = False, reference="numpy", no_gpu: str = "emulator",
               cpu_engine: str | None = None, log=None) -> ParityReport:
    """Train `model` on `reference` (NumPy) and on `device` for `steps` identical steps; compare everything.

    model: a name of `gpunet.models` (cnn, lenet, resnet-small, mlp) or a factory
        `factory(in_shape, num_classes) -> Module` (called with the NumPy generator seeded).
    device: "cuda", "emulator", "numpy"/"cpu" (the CPU backend on `cpu_engine`), "auto" (CUDA if usable)
        or a Backend.
    no_gpu: what "auto" compares when no GPU is usable: "emulator" (default) or "numpy".
    cpu_engine: the compared CPU backend's engine: "onednn" (oneDNN's convolutions against the NumPy
        reference: float32 differs in the last bits, float64 runs NumPy's code and is exactly 0), "numpy"
        (a self-check: exactly 0) or "auto"; None: GPUNET_CPU_ENGINE, else auto. Only for the CPU device.
    reference: "numpy" (default), always on the NumPy engine whatever GPUNET_CPU_ENGINE says: the
        reference must not be one of the engines under test.
    data: "digits" (scikit-learn's embedded digits via gpunet.data; the default for named models) or
        "random" (a seeded Gaussian batch per step, shape `in_shape`, default (1, 8, 8); the default for
        factories). `batches`, a list of host (x, y) pairs, overrides both.
    optimizer: "momentum" (SGD, momentum 0.9; default), "sgd" or "adam"; lr defaults per optimizer.
    tolerances: {kind: relative tolerance at step 1} overriding TOLERANCES[dtype]; tol_scale multiplies all.
    lockstep: before every step, give the device the reference's weights, buffers and optimizer state, so
        each step is compared from identical state (differences cannot accumulate; tolerances do not grow).
        For long runs: free-running float32 training diverges sooner or later (see `kink_flips`).
    log: a callable receiving one progress line per step (e.g. print), or None.
    """
    from gpunet.nn import SoftmaxCrossEntropy

    t_start = time.perf_counter()
    steps, batch_size = int(steps), int(batch_size)
    if steps < 1:
        raise ValueError(f"parity: steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"parity: batch size must be >= 2 (batch norm needs 2 values per channel), got {batch_size}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"parity: dtype must be float32 or float64, got {dt}")
    dname = dt.name
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"parity: unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    tols = dict(TOLERANCES[dname])
    if tolerances:
        unknown = set(tolerances) - set(tols)
        if unknown:
            raise ValueError(f"parity: unknown tolerance kinds {sorted(unknown)}; expected {sorted(tols)}")
        tols.update(tolerances)
    tols = {k: v * float(tol_scale) for k, v in tols.items()}
    dev_be = resolve_device(device, no_gpu=no_gpu, cpu_engine=cpu_engine)
    ref_be = get_backend(reference, cpu_engine="numpy")   # pinned: `auto` would often be oneDNN

    if not callable(model) and not isinstance(model, str):
        raise TypeError(f"parity: model must be a model name or a factory, got {type(model).__name__}")
    model_name = model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)
    if batches is not None:
        batches = [(np.asarray(x), np.asarray(y)) for x, y in batches][:steps]
        if len(batches) < steps:
            raise ValueError(f"parity: {steps} steps need {steps} batches, got {len(batches)}")
        data_desc = "given"
        in_shape = tuple(in_shape or batches[0][0].shape[1:])
        num_classes = int(num_classes or RANDOM_CLASSES)
    else:
        data = data or ("digits" if isinstance(model, str) else "random")
        data_desc, in_shape, num_classes, batches = _batches(data, steps, batch_size, seed, in_shape, num_classes)
        batch_size = len(batches[0][1])

    host = get_backend("numpy")
    saved_rng = host.rng  # building reseeds the shared NumPy generator; the caller's stream is restored
    try:
        ref, dev = _twin(model, in_shape, num_classes, seed, ref_be, dev_be, dt)
    finally:
        host.rng = saved_rng
    report = ParityReport(model_name, label(dev_be), label(ref_be), dname, steps, batch_size, int(seed), optimizer,
                          lr, data_desc, bool(lockstep))
    opts = {"reference": _optimizer(optimizer, list(ref.parameters()), lr),
            "device": _optimizer(optimizer, list(dev.parameters()), lr)}
    sides = {"reference": (ref, ref_be), "device": (dev, dev_be)}
    tracker = _Tracker(tols, ATOL[dname], ADAM_PARAM_ATOL * lr if optimizer == "adam" else 0.0,
                       growth=not lockstep)
    seconds = {"reference": 0.0, "device": 0.0}
    losses = {"reference": [], "device": []}
    layout = _layout(ref)

    for step, (xb, yb) in enumerate(batches, start=1):
        xb = xb.astype(dt, copy=False)
        if lockstep and step > 1:
            dev.load_state_dict(ref.state_dict())
            opts["device"].load_state_dict(opts["reference"].state_dict())
        results = {}
        for side, (m, be) in sides.items():
            store = {}
            t0 = time.perf_counter()
            with capture(m, store):
                x, y = Tensor(be.asarray(xb), requires_grad=True, backend=be), be.asarray(yb)
                crit = SoftmaxCrossEntropy()
                m.zero_grad()
                loss = crit(m(x), y)
                loss.backward()
                store["grads"] = {n: be.asnumpy(p.grad).copy() for n, p in m.named_parameters() if p.grad is not None}
                opts[side].step()
                store["loss"] = float(loss)
                store["params"] = m.state_dict()
            be.synchronize()
            seconds[side] += time.perf_counter() - t0
            losses[side].append(store["loss"])
            results[side] = store
        tracker.step_max = {}
        _compare_step(tracker, step, layout, results["reference"], results["device"])
        report.history.append({"step": step, **tracker.step_max})
        flips = _kink_flips(layout, results["reference"], results["device"])
        if flips:
            report.kink_flips[step] = flips
        if log is not None:
            bad = sum(1 for r in tracker.rows.values() if not r.passed)
            log(f"step {step}/{steps}: loss {losses['reference'][-1]:.6f} ({report.reference}) "
                f"{losses['device'][-1]:.6f} ({report.device}); {bad} row(s) failing so far")

    report.rows = list(tracker.rows.values())
    report.losses = losses
    report.seconds = {**seconds, "total": time.perf_counter() - t_start}
    return report


def _layout(model) -> list:
    """[(label, module type, [(short name, state key, is_param)])] in model order, from public traversals."""
    owned: dict[str, list] = {}
    params = {k for k, _ in model.named_parameters()}
    for key in model.state_dict():
        path, _, name = key.rpartition(".")
        owned.setdefault(path, []).append((name, key, key in params))
    return [(path or "(model)", type(m).__name__, owned.get(path, [])) for path, m in model.named_modules()]


def _compare_step(tracker: _Tracker, step: int, layout: list, r: dict, d: dict) -> None:
    """Add this step's rows in model order: loss, then per module its output, input gradient, its own
    parameters' gradients and values (after the step) and its buffers (after the step)."""
    missing = np.full(1, np.nan)
    tracker.add(step, "(loss)", "", "loss", "loss", r["loss"], d["loss"])
    for label, mod, entries in layout:
        for q, kind in (("output", "activation"), ("grad_input", "grad_input")):
            if (label, q) in r:
                tracker.add(step, label, mod, q, kind, r[(label, q)], d.get((label, q), missing))
        for name, key, is_param in entries:
            ref_v, dev_v = r["params"][key], d["params"].get(key, missing)
            if is_param:
                if key in r["grads"]:
                    tracker.add(step, label, mod, f"{name}.grad", "grad", r["grads"][key],
                                d["grads"].get(key, missing))
                tracker.add(step, label, mod, name, "param", ref_v, dev_v)
            else:  # buffers; integer ones (num_batches_tracked) are counts and must match exactly
                tracker.add(step, label, mod, name, "buffer", ref_v, dev_v, exact=np.asarray(ref_v).dtype.kind in "iub")


def _kink_flips(layout: list, r: dict, d: dict) -> dict:
    """{module: n} of module outputs with n elements exactly 0 on one side and not on the other: a ReLU
    (or fused conv+ReLU, or residual ReLU) whose input rounding carried across 0. Forward values then differ
    by a rounding error only, but that element's gradient is switched on one side and off on the other."""
    out = {}
    for label, module, _ in layout:
        a, b = r.get((label, "output")), d.get((label, "output"))
        if a is None or b is None or np.shape(a) != np.shape(b) or np.asarray(a).dtype.kind != "f":
            continue
        n = int(np.count_nonzero((np.asarray(a) == 0) != (np.asarray(b) == 0)))
        if n:
            out[f"{label} {module}"] = n
    return out
