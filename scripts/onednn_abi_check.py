"""Check gpunet.onednn._capi's constants against oneDNN's own headers, by compiling a C program.

    python scripts/onednn_abi_check.py --source ONEDNN_CHECKOUT --tag v3.2
    python scripts/onednn_abi_check.py --include DIR      # a directory holding oneapi/dnnl/*.h or dnnl*.h

The wheel ships no headers, so they come from a checkout of github.com/oneapi-src/oneDNN at the tag
of the version the wheel holds (dnnl_config.h / dnnl_version.h are generated here from their .in
templates for a CPU-only OpenMP build). Needs a C compiler (cc). Prints every mismatch; exit 1 if any.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpunet.onednn._capi import CONSTANTS, STATUS  # noqa: E402

HEADERS = ("dnnl.h", "dnnl_types.h", "dnnl_common.h", "dnnl_common_types.h", "dnnl_config.h", "dnnl_version.h")


def _from_source(src: str, tag: str, out: str) -> str:
    inc = os.path.join(out, "oneapi", "dnnl")
    os.makedirs(inc)
    ver = re.match(r"v(\d+)\.(\d+)(?:\.(\d+))?", tag)
    for name in HEADERS + ("dnnl_config.h.in", "dnnl_version.h.in"):
        r = subprocess.run(["git", "-C", src, "show", f"{tag}:include/oneapi/dnnl/{name}"], capture_output=True, text=True)
        if r.returncode:
            continue
        text = r.stdout
        if name == "dnnl_config.h.in":
            text = re.sub(r"#cmakedefine (DNNL_CPU_THREADING_RUNTIME|DNNL_CPU_RUNTIME) .*", r"#define \1 DNNL_RUNTIME_OMP", text)
            text = re.sub(r"#cmakedefine DNNL_GPU_RUNTIME .*", "#define DNNL_GPU_RUNTIME DNNL_RUNTIME_NONE", text)
            text = re.sub(r"#cmakedefine01 (\w+).*", r"#define \1 0", text)
            text = re.sub(r"#cmakedefine .*", "", text)
        if name == "dnnl_version.h.in":
            for key, val in (("MAJOR", ver[1]), ("MINOR", ver[2]), ("PATCH", ver[3] or "0"), ("HASH", "")):
                text = text.replace(f"@DNNL_VERSION_{key}@", val)
            text = re.sub(r"@\w+@", "0", text)
        with open(os.path.join(inc, name.removesuffix(".in")), "w") as f:
            f.write(text)
    return out


def check(include: str) -> int:
    header = '#include "oneapi/dnnl/dnnl.h"' if os.path.isdir(os.path.join(include, "oneapi")) else '#include "dnnl.h"'
    lines = [header, "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for name in CONSTANTS:
        lines.append(f'  printf("%s %lld\\n", "{name}", (long long)({name}));')
    for code, name in STATUS.items():
        lines.append(f'  printf("%s %lld\\n", "dnnl_{name}", (long long)(dnnl_{name}));')
    lines.append('  printf("sizeof_exec_arg %zu offset_memory %zu\\n", sizeof(dnnl_exec_arg_t), offsetof(dnnl_exec_arg_t, memory));')
    lines.append('  printf("sizeof_dims %zu\\n", sizeof(dnnl_dims_t));')
    lines.append("  return 0; }")
    with tempfile.TemporaryDirectory() as tmp:
        c, exe = os.path.join(tmp, "abi.c"), os.path.join(tmp, "abi")
        with open(c, "w") as f:
            f.write("\n".join(lines))
        subprocess.run(["cc", "-I", include, c, "-o", exe], check=True)
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    want = dict(CONSTANTS, **{f"dnnl_{n}": k for k, n in STATUS.items()})
    bad = 0
    for line in out.splitlines():
        if line.startswith("sizeof"):
            print(line)
            ok = line in ("sizeof_exec_arg 16 offset_memory 8", "sizeof_dims 96")
            bad += not ok
            continue
        name, val = line.split()
        if want[name] != int(val):
            print(f"MISMATCH {name}: _capi has {want[name]}, the headers say {val}")
            bad += 1
    print(f"{len(want)} constants checked, {bad} mismatches")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--include")
    ap.add_argument("--source")
    ap.add_argument("--tag", default="v3.2")
    a = ap.parse_args()
    if a.include:
        return check(a.include)
    with tempfile.TemporaryDirectory() as tmp:
        return check(_from_source(a.source, a.tag, tmp))


if __name__ == "__main__":
    sys.exit(main())
