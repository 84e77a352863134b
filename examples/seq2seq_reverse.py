"""Encoder-decoder on generated data: reverse a sequence of digits of variable length, with or without
Bahdanau attention, then print the exact-match accuracy of greedy decoding on held-out sequences.

    python examples/seq2seq_reverse.py                    # with attention
    python examples/seq2seq_reverse.py --no-attention     # the encoder's last state is all the decoder gets
    python examples/seq2seq_reverse.py --task sort        # sort the digits instead

Data (generated, seeded): source = 1..N digits (lengths uniform in [--min-len, --max-len]), right-padded;
target = the digits reversed (or sorted), then EOS. Tokens: PAD 0, BOS 1, EOS 2, digits 3..12. The model is
`nn.Seq2Seq` (GRU encoder, GRU decoder, optional `nn.AdditiveAttention` over the encoder's real steps),
trained by teacher forcing with `nn.SequenceCrossEntropy(ignore_index=PAD)` (the padded target steps do not
count); evaluation decodes greedily, and a sequence counts only if every token and the EOS are right.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gpunet  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
VOCAB = DIGIT0 + 10


def make_data(n: int, min_len: int, max_len: int, task: str, rng: np.random.Generator):
    """-> src (n, max_len), src_lengths (n,), tgt_in (n, max_len + 1), tgt_out (n, max_len + 1), all int64."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    src = np.full((n, max_len), PAD, np.int64)
    tgt_in = np.full((n, max_len + 1), PAD, np.int64)
    tgt_out = np.full((n, max_len + 1), PAD, np.int64)
    for i, length in enumerate(lengths):
        digits = rng.integers(0, 10, size=length) + DIGIT0
        out = digits[::-1] if task == "reverse" else np.sort(digits)
        src[i, :length] = digits
        tgt_in[i, 0], tgt_in[i, 1:length + 1] = BOS, out
        tgt_out[i, :length], tgt_out[i, length] = out, EOS
    return src, lengths.astype(np.int64), tgt_in, tgt_out


def exact_match(pred: np.ndarray, tgt_out: np.ndarray) -> float:
    """A row matches when it equals the target up to and including EOS (PAD after it in both)."""
    width = min(pred.shape[1], tgt_out.shape[1])
    return float(np.mean((pred[:, :width] == tgt_out[:, :width]).all(axis=1)))


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--task", choices=("reverse", "sort"), default="reverse")
    p.add_argument("--min-len", type=int, default=3)
    p.add_argument("--max-len", type=int, default=10)
    p.add_argument("--train", type=int, default=6000, help="training sequences")
    p.add_argument("--test", type=int, default=1000, help="held-out sequences")
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--embed", type=int, default=24)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from gpunet import get_backend, nn, optim

    t0 = time.perf_counter()
    be = get_backend(args.device)
    be.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = make_data(args.train, args.min_len, args.max_len, args.task, rng)
    test = make_data(args.test, args.min_len, args.max_len, args.task, np.random.default_rng(args.seed + 10_000))
    model = nn.Seq2Seq(VOCAB, VOCAB, embed=args.embed, hidden=args.hidden, attention=args.attention,
                       pad=PAD, bos=BOS, eos=EOS, backend=be)
    crit = nn.SequenceCrossEntropy(ignore_index=PAD)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * -(-args.train // args.batch_size)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for epoch in range(args.epochs):
        order = rng.permutation(args.train)
        total = 0.0
        for start in range(0, args.train, args.batch_size):
            idx = order[start:start + args.batch_size]
            src, lengths, tgt_in, tgt_out = (be.asarray(a[idx]) for a in train)
            width = int(lengths.max()) + 1  # trim the batch to its longest sequence
            opt.zero_grad()
            loss = crit(model(src[:, :width - 1], lengths, tgt_in[:, :width]), tgt_out[:, :width])
            loss.backward()
            optim.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {total / args.train:.4f}", flush=True)
    preds = [model.greedy_decode(be.asarray(test[0][i:i + 500]), be.asarray(test[1][i:i + 500]), args.max_len + 1)
             for i in range(0, args.test, 500)]
    acc = exact_match(np.concatenate(preds), test[3])
    print(f"{args.task} {args.min_len}-{args.max_len} digits, {'with' if args.attention else 'without'} attention, "
          f"{be.name}: exact match {100 * acc:.2f}% on {args.test} held-out sequences (greedy decoding), "
          f"{args.epochs} epochs, {time.perf_counter() - t0:.1f}s")
    return acc


if __name__ == "__main__":
    main()
