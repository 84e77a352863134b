"""Source handling for the CUDA emulator (no compiler involved).

* `expand_includes` inlines quoted includes (and angle includes found on -I paths) with `#line`
  markers, so that the cache key covers every header and g++ reports original file:line positions.
* `rewrite_extern_shared` turns `extern __shared__ T name[];` (dynamic shared memory, which has no
  g++ equivalent) into a pointer to the launch's dynamic shared buffer, on the same line.
* `parse_module` reads kernel signatures and static `__shared__` names from the `g++ -E` output, so
  macros and #if are honoured.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

# CUDA headers that NVRTC provides implicitly and the emulation header replaces.
_CUDA_HEADERS = {
    "cuda_runtime.h", "cuda_runtime_api.h", "cuda.h", "device_launch_parameters.h", "device_functions.h",
    "vector_types.h", "vector_functions.h", "math_constants.h", "sm_30_intrinsics.h", "sm_32_intrinsics.h",
    "sm_60_atomic_functions.h", "crt/math_functions.h", "math_functions.h",
}


class SourceError(ValueError):
    """A problem in the kernel source found before compiling (missing include, include loop)."""


# ------------------------------------------------------------------ masking comments and strings
def mask_source(text: str, keep_extern_c: bool = True) -> str:
    """Same-length copy of `text` with comments and string/char literal contents blanked
    (newlines kept), so regexes and brace counting cannot be fooled. `"C"`/`"C++"` survive so that
    `extern "C"` stays recognisable."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == '"' or (c == "'" and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            body = text[i + 1:j]
            if not (keep_extern_c and c == '"' and body in ("C", "C++")):
                for k in range(i + 1, min(j, n)):
                    if out[k] != "\n":
                        out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _mask_directives(masked: str) -> str:
    """Blank preprocessor directive lines (with continuations) of already-masked text."""
    lines = masked.split("\n")
    cont = False
    for idx, line in enumerate(lines):
        if cont or line.lstrip().startswith("#"):
            cont = line.rstrip().endswith("\\")
            lines[idx] = " " * len(line)
        else:
            cont = False
    return "\n".join(lines)


# ------------------------------------------------------------------ includes
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]')
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once\b")


def _line_directive(line: int, name: str) -> str:
    return '#line %d "%s"' % (line, name.replace("\\", "\\\\").replace('"', '\\"'))


@dataclass
class Expanded:
    text: str
    files: list = field(default_factory=list)     # display names of every file inlined, main first


def expand_includes(code: str, name: str, include_dirs, base_dir: str | None) -> Expanded:
    """Inline `#include "x"` (searched in the including file's directory, then -I dirs) and
    `#include <x>` when x lies on a -I dir; CUDA's own headers are dropped (the emulation header
    provides them); any other include is an error, as under NVRTC. `#pragma once` is honoured."""
    result = Expanded(text="")
    done_once: set[str] = set()

    def resolve(target: str, quoted: bool, cur_dir: str | None):
        cands = []
        if quoted and cur_dir is not None:
            cands.append(os.path.join(cur_dir, target))
        cands += [os.path.join(d, target) for d in include_dirs]
        for cand in cands:
            if os.path.isfile(cand):
                return os.path.normpath(cand)
        return None

    def expand(text: str, disp: str, cur_dir: str | None, real: str | None, stack: tuple) -> str:
        result.files.append(disp)
        masked = mask_source(text).split("\n")
        lines = text.split("\n")
        out = [_line_directive(1, disp)]
        for i, (line, mline) in enumerate(zip(lines, masked), start=1):
            if _PRAGMA_ONCE.match(mline):
                if real:
                    done_once.add(os.path.realpath(real))
                out.append("")
                continue
            m = _INCLUDE.match(mline)
            if not m:
                out.append(line)
                continue
            m = _INCLUDE.match(line) or m
            quoted, target = m.group(1) == '"', m.group(2).strip()
            found = resolve(target, quoted, cur_dir)
            if found is None:
                if target in _CUDA_HEADERS:
                    out.append("")          # provided by the emulation header
                elif quoted:
                    where = ", ".join([cur_dir or "."] + list(include_dirs))
                    raise SourceError(f"{disp}:{i}: cannot find include file \"{target}\" (searched: {where}; "
                                      "pass -I<dir> in options)")
                else:
                    raise SourceError(f"{disp}:{i}: cannot find include file <{target}>: NVRTC (CuPy) has no "
                                      "standard library headers, so neither does the emulator; include only "
                                      "your own headers (found through -I)")
                continue
            key = os.path.realpath(found)
            if key in done_once:
                out.append("")
                continue
            if key in stack:
                raise SourceError(f"{disp}:{i}: recursive #include of {found}")
            if len(stack) > 64:
                raise SourceError(f"{disp}:{i}: #include nested too deeply")
            with open(found, encoding="utf-8", errors="replace") as fh:
                sub = fh.read()
            if quoted and cur_dir is not None and os.path.normpath(os.path.join(cur_dir, target)) == found:
                sub_disp = os.path.normpath(os.path.join(os.path.dirname(disp), target))
            else:
                sub_disp = found
            out.append(expand(sub, sub_disp, os.path.dirname(found), found, stack + (key,)))
            out.append(_line_directive(i + 1, disp))
        return "\n".join(out)

    real = None
    if base_dir is not None and name and os.path.isfile(name):
        real = name
    stack = (os.path.realpath(real),) if real else ()
    result.text = expand(code, name, base_dir, real, stack) + "\n"
    return result


# ------------------------------------------------------------------ dynamic shared memory
_QUAL = r"(?:[A-Za-z_]\w*(?:\s*\(\s*\w+\s*\))?|::|<|>|,|\*)"
_EXTERN_SHARED = re.compile(
    r"\bextern\s+((?:" + _QUAL + r"\s*)*?)\b__shared__\s+((?:" + _QUAL + r"\s*)*?)\b([A-Za-z_]\w*)\s*\[\s*0?\s*\]\s*;")
_ALIGN = re.compile(r"\b(?:__align__|alignas)\s*\(\s*\w+\s*\)")


def _brace_kinds(masked: str):
    """Yield (offset, +1/-1, kind) for every brace; kind is 'code' for function/statement bodies,
    'scope' for namespace / extern "C" / class bodies."""
    last = 0
    for m in re.finditer(r"[{};]", masked):
        ch = m.group()
        if ch == "{":
            before = masked[last:m.start()]
            if re.search(r'\bnamespace\b[^;{}]*$', before) or re.search(r'\bextern\s*"C(\+\+)?"\s*$', before) \
                    or re.search(r"\b(struct|class|union|enum)\b[^;{}()]*$", before):
                kind = "scope"
            else:
                kind = "code"
            yield m.start(), +1, kind
        elif ch == "}":
            yield m.start(), -1, None
        last = m.end()


def rewrite_extern_shared(text: str) -> str:
    """`extern __shared__ T s[];` -> `T* const s = ...dyn_smem;` inside functions, or a
    `static ::emu::DynShared<T> s;` view at namespace scope. Line count is preserved."""
    masked = mask_source(text)
    matches = list(_EXTERN_SHARED.finditer(masked))
    if not matches:
        return text
    events = list(_brace_kinds(_mask_directives(masked)))
    out, pos, ev, stack = [], 0, 0, []
    for m in matches:
        while ev < len(events) and events[ev][0] < m.start():
            _, step, kind = events[ev]
            if step > 0:
                stack.append(kind)
            elif stack:
                stack.pop()
            ev += 1
        ctype = " ".join(_ALIGN.sub(" ", (m.group(1) + " " + m.group(2))).split())
        name = m.group(3)
        if "code" in stack:
            new = f"{ctype}* const {name} = reinterpret_cast<{ctype}*>(::emu::dyn_smem);"
        else:
            new = f"static ::emu::DynShared<{ctype}> {name};"
        out.append(text[pos:m.start()])
        out.append(new + "\n" * text.count("\n", m.start(), m.end()))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


# ------------------------------------------------------------------ kernel signatures
@dataclass
class Param:
    name: str
    ctype: str            # canonical base type, e.g. "float", "unsigned int"
    pointer: bool
    const: bool           # pointee is const (pointers only)
    text: str             # the declaration as written (after preprocessing)
    problem: str | None = None   # why the emulator cannot pass it, if it cannot


@dataclass
class Kernel:
    name: str
    params: list
    extern_c: bool
    file: str
    line: int
    launch_bounds: str | None = None


_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[A-Za-z_]\w*|\d[\w.]*|::|->|\S')
_LINEMARK = re.compile(r'^#\s*(?:line\s+)?(\d+)\s+"((?:\\.|[^"\\])*)"')

_TYPEDEFS = {
    "int8_t": "signed char", "uint8_t": "unsigned char", "int16_t": "short", "uint16_t": "unsigned short",
    "int32_t": "int", "uint32_t": "unsigned int", "int64_t": "long", "uint64_t": "unsigned long",
    "size_t": "unsigned long", "ptrdiff_t": "long", "intptr_t": "long", "uintptr_t": "unsigned long",
}
_VECTORS = {f"{b}{n}" for b in ("char", "uchar", "short", "ushort", "int", "uint", "float", "long", "ulong",
                                 "longlong", "ulonglong", "double") for n in (1, 2, 3, 4)}
_BUILTIN_WORDS = {"unsigned", "signed", "long", "short", "int", "char", "float", "double", "bool", "void"}


def _canonical(words: list) -> str | None:
    """Canonical spelling of a fundamental type from its specifier words, else None."""
    if len(words) == 1 and words[0] in _TYPEDEFS:
        return _TYPEDEFS[words[0]]
    if len(words) == 1 and (words[0] in _VECTORS or words[0] in ("dim3",)):
        return words[0]
    if not words or any(w not in _BUILTIN_WORDS for w in words):
        return None
    nlong, uns = words.count("long"), "unsigned" in words
    for simple in ("float", "double", "bool", "void"):
        if simple in words:
            return simple if len(words) == 1 else None
    if "char" in words:
        return "unsigned char" if uns else ("signed char" if "signed" in words else "char")
    if "short" in words:
        return "unsigned short" if uns else "short"
    if nlong == 2:
        return "unsigned long long" if uns else "long long"
    if nlong == 1:
        return "unsigned long" if uns else "long"
    return "unsigned int" if uns else "int"


def _parse_param(toks: list) -> Param | None:
    text = " ".join(toks)
    toks = [t for t in toks if t not in ("__restrict__", "__restrict", "restrict", "__grid_constant__",
                                         "struct", "typename")]
    if "=" in toks:
        toks = toks[:toks.index("=")]
    if not toks or toks == ["void"]:
        return None
    if "&" in toks or "&&" in toks:
        return Param("", "", False, False, text, "references cannot be kernel parameters")
    if "[" in toks:                                       # T a[] decays to T*
        toks = toks[:toks.index("[")] + ["*"]
    nstar = toks.count("*")
    first_star = toks.index("*") if nstar else len(toks)
    head = toks[:first_star]
    const = "const" in head
    words = [t for t in head if t not in ("const", "volatile")]
    name = ""
    tail = [t for t in toks[first_star:] if t not in ("*", "const", "volatile")]
    if tail:
        name = tail[-1]
    elif len(words) > 1 and words[-1] not in _BUILTIN_WORDS:
        name = words.pop()
    ctype = _canonical(words)
    p = Param(name, ctype or " ".join(words), nstar == 1, const and nstar == 1, text)
    if nstar > 1:
        p.problem = "pointers to pointers are not supported by the emulator"
    elif ctype is None:
        p.problem = f"parameter type '{' '.join(words)}' is not supported by the emulator"
    elif nstar == 0 and (ctype == "void" or ctype in _VECTORS or ctype == "dim3"):
        p.problem = f"passing '{ctype}' by value is not supported by the emulator"
    return p


def _split_top(toks: list, sep: str = ","):
    parts, cur, depth = [], [], 0
    for t in toks:
        if t in "([{<":
            depth += 1
        elif t in ")]}>":
            depth -= 1
        if t == sep and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return parts


def _matching(toks: list, i: int) -> int:
    """Index of the bracket closing toks[i]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    open_, close = toks[i], pairs[toks[i]]
    depth = 0
    for j in range(i, len(toks)):
        if toks[j] == open_:
            depth += 1
        elif toks[j] == close:
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


@dataclass
class Parsed:
    kernels: list               # Kernel, in source order
    shared: list                # (name, function_local) of every static __shared__ variable


def parse_module(preprocessed: str, user_files) -> Parsed:
    """Kernels (`__global__` functions) and static `__shared__` variables defined in the user's files,
    from `g++ -E` output made with -D__EMU_PARSE_PASS (which turns __global__, __launch_bounds__ and
    __shared__ into marker tokens)."""
    user = set(user_files)
    toks, where = [], []
    cur_file, cur_line = None, 0
    for raw in preprocessed.split("\n"):
        m = _LINEMARK.match(raw)
        if m:
            cur_line, cur_file = int(m.group(1)), m.group(2).encode().decode("unicode_escape")
            continue
        if cur_file in user and raw.strip():
            for t in _TOKEN.findall(raw):
                toks.append(t)
                where.append((cur_file, cur_line))
        cur_line += 1

    kernels: dict[str, Kernel] = {}
    shared: list = []
    braces: list[str] = []      # "C" (extern "C" block), "scope" (namespace/class), "code"
    decl = 0
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "{":
            before = toks[decl:i]
            if len(before) == 2 and before[0] == "extern" and before[1] == '"C"':
                braces.append("C")
            elif "namespace" in before or ("(" not in before and
                                           any(w in before for w in ("struct", "class", "union", "enum"))):
                braces.append("scope")
            else:
                braces.append("code")
            decl = i + 1
        elif t == "}":
            if braces:
                braces.pop()
            decl = i + 1
        elif t == ";":
            decl = i + 1
        elif t == "__emu_global__":
            k, i = _parse_kernel(toks, where, decl, i, "C" in braces)
            if k is not None:
                kernels[k.name] = k
            decl = i + 1
        elif t == "__emu_shared__":
            end = i
            while end < len(toks) and toks[end] not in (";", "{", "}"):
                end += 1
            for name in _declarator_names(toks[i + 1:end]):
                shared.append((name, "code" in braces))
            i = end
            continue
        i += 1
    return Parsed(list(kernels.values()), shared)


_NOT_NAMES = _BUILTIN_WORDS | {"static", "const", "volatile", "struct", "typename", "__attribute__"}


def _declarator_names(toks: list) -> list:
    """Variable names declared by `T a[4], b;` (tokens after the __shared__ marker)."""
    names = []
    for part in _split_top(toks):
        cut = []
        j = 0
        while j < len(part):
            if part[j] in ("__attribute__", "alignas") and j + 1 < len(part) and part[j + 1] == "(":
                j = _matching(part, j + 1) + 1
                continue
            if part[j] in ("[", "="):
                break
            cut.append(part[j])
            j += 1
        idents = [w for w in cut if re.match(r"[A-Za-z_]\w*$", w) and w not in _NOT_NAMES]
        if idents:
            names.append(idents[-1])
    return names


def _parse_kernel(toks, where, decl, i, in_extern_c):
    prefix = toks[decl:i]
    extern_c = in_extern_c or any(prefix[j] == "extern" and prefix[j + 1] == '"C"' for j in range(len(prefix) - 1))
    bounds = None
    j = i + 1
    name = None
    # launch bounds may precede or follow __global__
    for k in range(len(prefix)):
        if prefix[k] == "__emu_launch_bounds__" and k + 1 < len(prefix) and prefix[k + 1] == "(":
            bounds = " ".join(_split_top(prefix[k + 2:_matching(prefix, k + 1)])[0])
    while j < len(toks):
        t = toks[j]
        if t in ("__emu_launch_bounds__", "__attribute__", "__declspec", "alignas") and j + 1 < len(toks) \
                and toks[j + 1] == "(":
            end = _matching(toks, j + 1)
            if t == "__emu_launch_bounds__":
                bounds = " ".join(_split_top(toks[j + 2:end])[0])
            j = end + 1
            continue
        if t == "(":
            name = toks[j - 1]
            break
        if t in (";", "{", "}"):
            return None, j
        j += 1
    if name is None or not re.match(r"[A-Za-z_]\w*$", name):
        return None, j
    end = _matching(toks, j)
    after = toks[end + 1] if end + 1 < len(toks) else ";"
    params = []
    for part in _split_top(toks[j + 1:end]):
        p = _parse_param(part)
        if p is not None:
            params.append(p)
    file, line = where[j - 1]
    if after != "{":              # a declaration: the definition (if any) comes later
        return None, end
    if "template" in prefix:
        extern_c = False
    return Kernel(name, params, extern_c, file, line, bounds), end
