"""Digits read row by row: an LSTM (or GRU) classifies scikit-learn's embedded 8x8 digits as sequences of
8 time steps of 8 pixels each, offline, then prints the held-out test accuracy.

    python examples/mnist_rows.py                      # LSTM, NumPy/auto device, ~96% in well under a minute
    python examples/mnist_rows.py --cell gru --device cpu
    python examples/mnist_rows.py --cell gru-reset-before   # the course notes' GRU (Cho et al.): reset_after=False
    python examples/mnist_rows.py --cell gru --layers 2 --bidirectional   # deep, reading both ways

The model is `RowsAsSequence -> LSTM(8, hidden) -> LastStep -> Linear(hidden, 10)`: only the last step's
output feeds the classifier (many-to-one), so backpropagation through time starts from a gradient at the
last step and zeros elsewhere. It trains with the library's own Trainer (Adam, cosine schedule, gradient
clipping), the same loop `gpunet train` uses.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import gpunet  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(cell: str, hidden: int, num_layers: int, backend, bidirectional: bool = False):
    from gpunet import nn
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN,
           "gru-reset-before": lambda *a, **k: nn.GRU(*a, reset_after=False, **k)}[cell]
    width = hidden * (2 if bidirectional else 1)
    return nn.Sequential(nn.RowsAsSequence(), rnn(8, hidden, num_layers, bidirectional=bidirectional),
                         nn.LastStep(bidirectional=bidirectional), nn.Linear(width, 10)).to(backend)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=("lstm", "gru", "gru-reset-before", "rnn"), default="lstm")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true", help="read the rows top-down and bottom-up")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from gpunet import get_backend, optim
    from gpunet.data import DataLoader, load_digits
    from gpunet.training import Trainer, evaluate

    t0 = time.perf_counter()
    be = get_backend(args.device)
    be.seed(args.seed)
    data = load_digits()  # (N, 1, 8, 8) normalised; RowsAsSequence turns each image into 8 steps of 8 pixels
    train = DataLoader(data.x_train, data.y_train, args.batch_size, shuffle=True, seed=args.seed, backend=be)
    test = DataLoader(data.x_test, data.y_test, 256, shuffle=False, backend=be)
    model = build(args.cell, args.hidden, args.layers, be, args.bidirectional)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(train))
    Trainer(model, opt, scheduler=sched, clip_grad_norm=5.0, progress="none").fit(train, epochs=args.epochs)
    acc = evaluate(model, test)["accuracy"]
    kind = f"{'bidirectional ' if args.bidirectional else ''}{args.cell.upper()} x{args.layers}"
    print(f"{kind} on digits read row by row (8 steps x 8 features), {be.name}: "
          f"test accuracy {100 * acc:.2f}% on {len(data.y_test)} images, {args.epochs} epochs, "
          f"{time.perf_counter() - t0:.1f}s")
    return acc


if __name__ == "__main__":
    main()
