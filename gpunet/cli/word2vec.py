"""`gpunet word2vec`: train skip-gram word vectors with negative sampling (or GloVe with --method glove),
then query or save them.

The default corpus is the Python language reference that ships with every CPython (`pydoc_data`, about
64,000 words, offline); --corpus FILE trains on a UTF-8 text file instead. Prints the nearest neighbours of
--neighbours words and the answers to --analogy A B C ("A is to B as C is to ?"), and writes the vectors in
the word2vec text format to --out (gensim: KeyedVectors.load_word2vec_format(path)). --load FILE skips the
training and queries saved vectors.
"""
from __future__ import annotations

import argparse
import sys

HELP = "skip-gram word vectors (negative sampling): train, nearest neighbours, analogies, word2vec text format"


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_device
    p = subparsers.add_parser("word2vec", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device(p)
    p.add_argument("--corpus", default="python-docs", metavar="FILE",
                   help="a UTF-8 text file, or python-docs (default: the Python reference shipped with Python)")
    p.add_argument("--load", metavar="FILE", default=None, help="query vectors saved in the word2vec text format")
    p.add_argument("--method", choices=("sgns", "glove"), default="sgns",
                   help="skip-gram with negative sampling (default) or GloVe's weighted least squares")
    p.add_argument("--dim", type=int, default=64, help="vector size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="default: 5 (sgns), 20 (glove)")
    p.add_argument("--window", type=int, default=5, help="largest context distance (default: %(default)s)")
    p.add_argument("--negatives", type=int, default=5, help="noise words per pair (default: %(default)s)")
    p.add_argument("--min-count", type=int, default=5, help="rarer words are dropped (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default: 2e-3 sgns, 1e-2 glove)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs (sgns, default 1024) or co-occurrence entries (glove, default 4096) per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbours", nargs="*", default=[], metavar="WORD", help="print each word's 8 nearest words")
    p.add_argument("--analogy", nargs=3, action="append", default=[], metavar=("A", "B", "C"),
                   help="print the 3 best answers to A is to B as C is to ? (repeatable)")
    p.add_argument("--out", metavar="FILE", default=None, help="write the vectors (word2vec text format)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gpunet import get_backend, word2vec

    glove = args.method == "glove"
    for name, sgns_default, glove_default in (("epochs", 5, 20), ("lr", 2e-3, 1e-2), ("batch_size", 1024, 4096)):
        if getattr(args, name) is None:
            setattr(args, name, glove_default if glove else sgns_default)
    for name in ("dim", "epochs", "window", "negatives", "min_count", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.load:
        kv = word2vec.KeyedVectors.load_word2vec_format(args.load)
    else:
        if args.corpus == "python-docs":
            text = word2vec.python_docs_corpus()
        else:
            with open(args.corpus, encoding="utf-8") as f:
                text = f.read()
        tokens = word2vec.tokenize(text)
        vocab = word2vec.Vocab.build(tokens, args.min_count)
        be = get_backend(args.device)
        be.seed(args.seed)
        print(f"corpus {args.corpus}: {len(tokens)} words, vocabulary {len(vocab)} (min count {args.min_count})",
              file=sys.stderr)
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        if glove:
            model = word2vec.GloVe(len(vocab), args.dim, backend=be)
            word2vec.train_glove(model, vocab, tokens, args.epochs, args.window, args.batch_size, args.lr,
                                 seed=args.seed, log=log)
        else:
            model = word2vec.SkipGramNS(len(vocab), args.dim, backend=be)
            word2vec.train(model, vocab, tokens, args.epochs, args.window, args.negatives, args.batch_size,
                           args.lr, seed=args.seed, log=log)
        kv = word2vec.KeyedVectors(vocab.words, model.vectors())
    for w in args.neighbours:
        near = ", ".join(f"{x} {s:.2f}" for x, s in kv.most_similar(w, topn=8))
        print(f"{w}: {near}")
    for a, b, c in args.analogy:
        best = ", ".join(f"{x} {s:.2f}" for x, s in kv.analogy(a, b, c, topn=3))
        print(f"{a} : {b} :: {c} : {best}")
    if args.out:
        kv.save_word2vec_format(args.out)
        print(f"wrote {len(kv.words)} vectors of size {kv.vectors.shape[1]} to {args.out}")
    return 0
