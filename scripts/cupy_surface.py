"""Derive the CuPy API surface that the test stand-in (tests/cupy_standin) may expose.

Run it with the real CuPy installed (the cupy-cuda12x wheel imports without a GPU; only device calls fail):

    python -m venv /tmp/cupyenv && /tmp/cupyenv/bin/pip install numpy cupy-cuda12x
    /tmp/cupyenv/bin/python scripts/cupy_surface.py            # rewrites tests/cupy_standin/cupy_surface.json
    /tmp/cupyenv/bin/python scripts/cupy_surface.py --check    # exit 1 when the committed list has drifted

The list records, for each public name of `cupy`, `cupy.linalg`, `cupy.random`, `cupy.lib.stride_tricks`,
`cupy.fft` and `cupyx`, what it is (function, ufunc, type, module, value) and the keyword arguments
`inspect` (or the Cython docstring's signature line) can read; the same for `cupy.ndarray`'s methods and
attributes and for the ufunc methods. The stand-in refuses every name and keyword that is not listed, so
code that passes against it uses only what CuPy has.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "cupy_standin" / "cupy_surface.json"
MODULES = ("cupy", "cupy.linalg", "cupy.random", "cupy.lib.stride_tricks", "cupy.fft", "cupyx")
_DOC_SIG = re.compile(r"^[\w.]*?(\w+)\((.*?)\)")


def _params_from_text(text: str):
    """Keyword names and whether **kwargs is open, from 'name(a, b=1, *, c=None)' text."""
    names, var_kw = [], False
    for part in (p.strip() for p in text.split(",")):
        part = part.replace("\\", "")
        if not part or part in ("/", "*", "self"):
            continue
        if part.startswith("**"):
            var_kw = True
            continue
        if part.startswith("*"):
            continue
        names.append(part.split("=")[0].strip())
    return {"params": names, "var_kw": var_kw}


def signature(obj):
    """{'params': [...], 'var_kw': bool}, or None when neither inspect nor the docstring tells."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        names = [p.name for p in sig.parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
        var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        return {"params": names, "var_kw": var_kw}
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    if doc:
        m = _DOC_SIG.match(doc[0].strip())
        if m:
            return _params_from_text(m.group(2))
    return None


def describe(obj) -> dict:
    import cupy
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if isinstance(obj, cupy.ufunc):
        return {"kind": "ufunc", "nin": obj.nin, "nout": obj.nout}
    if isinstance(obj, type):
        return {"kind": "type"}
    if callable(obj):
        return {"kind": "function", "signature": signature(obj)}
    return {"kind": "value"}


def derive() -> dict:
    import importlib

    import cupy
    import numpy
    out = {"cupy_version": cupy.__version__, "numpy_version": numpy.__version__, "modules": {}}
    for modname in MODULES:
        mod = importlib.import_module(modname)
        names = {}
        for n in sorted(dir(mod)):
            if n.startswith("_"):
                continue
            obj = getattr(mod, n)
            if inspect.ismodule(obj) and not obj.__name__.startswith(("cupy", "cupyx")):
                continue   # `np`, `annotations`, ... imported helpers, not API
            names[n] = describe(obj)
        out["modules"][modname] = names
    nd = {}
    for n in sorted(dir(cupy.ndarray)):
        if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
            continue
        attr = inspect.getattr_static(cupy.ndarray, n)
        kind = "method" if callable(attr) or type(attr).__name__ in ("method_descriptor", "cython_function_or_method") \
            else "attribute"
        entry = {"kind": kind}
        if kind == "method" and not n.startswith("__"):
            entry["signature"] = signature(getattr(cupy.ndarray, n))
        nd[n] = entry
    out["ndarray"] = nd
    u = cupy.add
    out["ufunc"] = {
        "call": signature(u),
        "methods": {m: signature(getattr(u, m)) for m in sorted(dir(u))
                    if not m.startswith("_") and callable(getattr(u, m))},
        "attributes": sorted(m for m in dir(u) if not m.startswith("_") and not callable(getattr(u, m))),
    }
    out["cuda"] = sorted(n for n in dir(cupy.cuda) if not n.startswith("_"))
    out["cuda.runtime"] = sorted(n for n in dir(cupy.cuda.runtime) if not n.startswith("_"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed list instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    try:
        surface = derive()
    except ImportError as e:
        print(f"cupy_surface: needs the real CuPy installed ({e})", file=sys.stderr)
        return 2
    text = json.dumps(surface, indent=1, sort_keys=True) + "\n"
    if args.check:
        old = json.loads(args.out.read_text())
        old.pop("cupy_version", None), old.pop("numpy_version", None)
        new = dict(surface)
        new.pop("cupy_version"), new.pop("numpy_version")
        if old != new:
            print(f"cupy_surface: {args.out} differs from CuPy {surface['cupy_version']}; rerun without --check",
                  file=sys.stderr)
            return 1
        print(f"cupy_surface: {args.out} matches CuPy {surface['cupy_version']}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"cupy_surface: wrote {args.out} (CuPy {surface['cupy_version']}, "
          f"{sum(len(v) for v in surface['modules'].values())} module names, {len(surface['ndarray'])} ndarray names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
