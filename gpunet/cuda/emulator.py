"""CPU emulator of our CUDA kernels: the exact `.cu` source, compiled with g++, run as fibers.

The API mirrors CuPy so that kernel launch code is shared with the GPU backend::

    mod = EmulatedModule(code=src, options=("-I/path/to/cuda_kernels", "-std=c++17"), path="pool.cu")
    k = mod.get_function("maxpool2d_fwd_f32")
    k(grid, block, (x, y, np.int32(n)), shared_mem=0)

How it works (details and limits in docs/emulator.md): the source is compiled into a shared library
together with `emu/cuda_emu.h` (force-included: CUDA keywords, builtins, intrinsics) and
`emu/emu_runtime.cpp` (the scheduler). Each block's threads run as cooperative fibers in one OS thread;
they switch only at barriers and warp collectives. Launches are checked strictly (argument types,
launch geometry) and failures inside a kernel (barrier divergence, deadlocked warp collectives, traps,
crashes) become Python exceptions naming the kernel, file:line, block and thread.

Environment:
    GPUNET_EMU_SEED     integer: seeded random thread order (default: fixed thread order)
    GPUNET_EMU_CHECK    1: run each launch in a forked child on guard-paged copies of the arrays
    GPUNET_EMU_TIMEOUT  seconds before a check-mode launch is declared hung (default 120)
    GPUNET_EMU_STACK_KB per-thread fiber stack (default 64)
    GPUNET_EMU_CXX      the C++ compiler (default g++)
    GPUNET_CACHE_DIR    cache root (compiled modules go to $GPUNET_CACHE_DIR/emu, default ~/.cache/gpunet/emu)
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from gpunet.cuda import _emu_source as _src

__all__ = [
    "EmulatedModule", "EmulatedKernel", "set_schedule_seed", "get_schedule_seed", "schedule_seed",
    "set_check_mode", "EmulatorError", "EmulatorCompileError", "KernelLaunchError", "KernelDeadlockError",
    "KernelTrapError", "KernelCrashError", "KernelTimeoutError", "KernelNotFoundError", "clear_memory_cache",
]

EMU_DIR = Path(__file__).resolve().with_name("emu")
HEADER = EMU_DIR / "cuda_emu.h"
RUNTIME = EMU_DIR / "emu_runtime.cpp"
_PYTHON_VERSION = 1          # bump when this file changes what goes into a compiled module

# CUDA limits (compute capability 7.0 .. 9.0)
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_LIMIT = 48 * 1024            # without the max_dynamic_shared_size_bytes opt-in
MAX_SHARED_OPTIN = 227 * 1024               # sm_90

# Compiler flags. -ffp-contract=off: no silent FMA contraction (results do not depend on -march);
# -fno-strict-aliasing: kernels pun float4/int pointers freely; -g1: line tables to locate crashes.
_CXXFLAGS = ["-O2", "-fPIC", "-g1", "-fvisibility=hidden", "-fno-strict-aliasing", "-ffp-contract=off",
             "-fno-math-errno", "-fno-exceptions", "-fno-rtti", "-pthread"]
_LDFLAGS = ["-shared", "-Wl,-z,defs"]      # an undefined device function is a build error, not a dlopen one


# ------------------------------------------------------------------ errors
class EmulatorError(RuntimeError):
    """Base class: something went wrong compiling or running a kernel in the emulator."""

    def __init__(self, message: str, *, kernel: str | None = None, file: str | None = None,
                 line: int | None = None, block=None, thread=None):
        super().__init__(message)
        self.kernel, self.file, self.line, self.block, self.thread = kernel, file, line, block, thread


class EmulatorCompileError(EmulatorError):
    """g++ rejected the kernel source; the message quotes the diagnostics with original file:line."""


class KernelLaunchError(EmulatorError, ValueError):
    """Invalid launch configuration (what CUDA reports as an invalid configuration / value)."""


class KernelDeadlockError(EmulatorError):
    """Barrier divergence, or a warp collective that can never complete or whose lanes disagree."""


class KernelTrapError(EmulatorError):
    """__trap(), a failed device assert(), or an intrinsic used in a way that is undefined on a GPU."""


class KernelCrashError(EmulatorError):
    """The kernel crashed (invalid memory access, stack overflow, division by zero...)."""


class KernelTimeoutError(EmulatorError):
    """A check-mode launch did not finish in time."""


class KernelNotFoundError(KeyError):
    """get_function() for a name the module does not define as an extern "C" kernel."""

    def __str__(self):  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


_ERRORS = {1: KernelLaunchError, 2: KernelDeadlockError, 3: KernelTrapError, 4: KernelCrashError,
           5: KernelTimeoutError, 6: EmulatorError}


# ------------------------------------------------------------------ global settings
_UNSET = object()
_seed_override = _UNSET
_check_override: bool | None = None


def set_schedule_seed(seed: int | None):
    """Resume the runnable threads of a block in a random order drawn from `seed` (blocks are visited
    in a seeded order too); None restores the default fixed order (thread index order). Overrides
    GPUNET_EMU_SEED. Returns the previous setting."""
    global _seed_override
    prev = get_schedule_seed()
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"schedule seed must be an int or None, got {type(seed).__name__}")
    _seed_override = None if seed is None else int(seed)
    return prev


def get_schedule_seed() -> int | None:
    """The seed in effect: set_schedule_seed() if called, else GPUNET_EMU_SEED, else None."""
    if _seed_override is not _UNSET:
        return _seed_override
    env = os.environ.get("GPUNET_EMU_SEED", "").strip()
    if env.lower() in ("", "none", "default"):
        return None
    try:
        return int(env, 0)
    except ValueError:
        raise ValueError(f"GPUNET_EMU_SEED={env!r} is not an integer") from None


@contextlib.contextmanager
def schedule_seed(seed: int | None):
    """Context manager form of set_schedule_seed (restores the previous setting on exit)."""
    global _seed_override
    saved = _seed_override
    set_schedule_seed(seed)
    try:
        yield
    finally:
        _seed_override = saved


def set_check_mode(enabled: bool | None):
    """Force check mode on/off (None: follow GPUNET_EMU_CHECK). Check mode runs every launch in a
    forked child, on copies of the arrays that end at a guard page, so that out-of-bounds accesses
    and hangs become exceptions instead of corrupting or stopping this process."""
    global _check_override
    _check_override = enabled


def _check_mode() -> bool:
    if _check_override is not None:
        return _check_override
    return os.environ.get("GPUNET_EMU_CHECK", "").strip().lower() not in ("", "0", "false", "no", "off")


# ------------------------------------------------------------------ options
def _parse_options(options):
    """CuPy/NVRTC options -> (include dirs, -D/-U flags, C++ standard, __CUDA_ARCH__ or None).
    Options that only matter to NVRTC (-arch code generation, --use_fast_math, -lineinfo...) are ignored."""
    if isinstance(options, str):
        options = (options,)
    inc, defs, std, arch = [], [], "c++17", None
    opts = list(options or ())
    i = 0
    while i < len(opts):
        o = str(opts[i])

        def value(flag_short, flag_long):
            nonlocal i
            if o in (flag_short, flag_long):
                i += 1
                return str(opts[i]) if i < len(opts) else ""
            if o.startswith(flag_long + "="):
                return o[len(flag_long) + 1:]
            return o[len(flag_short):]

        if o.startswith("-I") or o.startswith("--include-path"):
            inc.append(value("-I", "--include-path"))
        elif o.startswith("-D") or o.startswith("--define-macro"):
            defs.append("-D" + value("-D", "--define-macro"))
        elif o.startswith("-U") or o.startswith("--undefine-macro"):
            defs.append("-U" + value("-U", "--undefine-macro"))
        elif o.startswith("-std=") or o.startswith("--std="):
            want = o.split("=", 1)[1]
            std = want if want in ("c++17", "c++20") else ("c++20" if want in ("c++2a", "c++23") else "c++17")
        elif o.startswith("-arch") or o.startswith("--gpu-architecture"):
            a = value("-arch", "--gpu-architecture").lstrip("=")
            m = re.search(r"(\d+)", a)
            if m:
                arch = int(m.group(1)) * 10
        i += 1
    return inc, defs, std, arch


# ------------------------------------------------------------------ compiling and caching
def _cache_dir() -> Path:
    root = os.environ.get("GPUNET_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "gpunet"
    d = base / "emu"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cxx() -> str:
    return os.environ.get("GPUNET_EMU_CXX", "g++")


def _runtime_defines() -> list:
    """GPUNET_EMU_UCONTEXT=1 forces the portable ucontext fibers (used on non-x86-64) for testing."""
    on = os.environ.get("GPUNET_EMU_UCONTEXT", "").strip().lower() not in ("", "0", "false", "no", "off")
    return ["-DEMU_USE_UCONTEXT"] if on else []


_EMU_SOURCES_HASH = None


def _emu_sources_hash() -> str:
    global _EMU_SOURCES_HASH
    if _EMU_SOURCES_HASH is None:
        h = hashlib.sha256()
        for p in (HEADER, RUNTIME, Path(__file__), Path(_src.__file__)):
            h.update(p.read_bytes())
        _EMU_SOURCES_HASH = h.hexdigest()
    return _EMU_SOURCES_HASH


def _atomic_write(path: Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _run(cmd, what_file: str, kernel_file: str, src_text: str | None = None):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise EmulatorCompileError(f"cannot compile {kernel_file} for the CPU emulator: compiler '{cmd[0]}' not "
                                   "found (install g++ or set GPUNET_EMU_CXX)", file=kernel_file) from None
    if proc.returncode != 0:
        raise _compile_error(proc, what_file, kernel_file, src_text)
    return proc.stdout


_DIAG_ERROR = re.compile(r"(.+?):(\d+):(?:\d+:)? (?:fatal )?error: ")


def _compile_error(proc, tu_path: str, kernel_file: str, src_text: str | None):
    """EmulatorCompileError quoting g++'s diagnostics (already in original file:line terms)."""
    lines = [ln.replace(tu_path, "<translation unit>") for ln in proc.stderr.splitlines()]
    first = next((m for m in map(_DIAG_ERROR.match, lines) if m), None)
    shown = "\n".join(lines[:80]) + ("\n..." if len(lines) > 80 else "")
    head = f"cannot compile {kernel_file} for the CPU emulator (exit {proc.returncode})"
    if first:
        head += f": first error at {first.group(1)}:{first.group(2)}"
    undefined = re.search(r"undefined reference to `([^']+)'", proc.stderr)
    if undefined and not first:
        head += f": `{undefined.group(1)}` is declared but never defined (NVRTC needs every device function " \
                "in the one translation unit too)"
    hints = []
    if src_text is not None and re.search(r"\basm\s*(volatile\s*)?\(", src_text):
        hints.append("inline PTX (asm) cannot be emulated")
    if re.search(r"No such file or directory", proc.stderr):
        hints.append("NVRTC has no standard headers and the emulator provides CUDA's own; include only your "
                     "own files (with -I)")
    if re.search(r"'(INFINITY|NAN|FLT_MAX|M_PI)' was not declared", proc.stderr):
        hints.append("NVRTC defines no C-library macros: write -inf as __int_as_float(0xff800000), "
                     "+inf as __int_as_float(0x7f800000), FLT_MAX as 3.402823466e+38f")
    msg = head + "\n" + shown + "".join(f"\nhint: {h}" for h in hints)
    return EmulatorCompileError(msg, file=first.group(1) if first else kernel_file,
                                line=int(first.group(2)) if first else None)


_runtime_lock = threading.Lock()


def _runtime_object(cache: Path) -> Path:
    """emu_runtime.cpp compiled once per (sources, compiler) and linked into every module."""
    flags = _CXXFLAGS + _runtime_defines()
    key = hashlib.sha256(f"{_emu_sources_hash()}|{_cxx()}|{flags}".encode()).hexdigest()[:24]
    obj = cache / f"emu_runtime-{key}.o"
    with _runtime_lock:
        if not obj.exists():
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=obj.name + ".", suffix=".o")
            os.close(fd)
            try:
                _run([_cxx(), "-std=c++17", *flags, "-I", str(EMU_DIR), "-c", str(RUNTIME), "-o", tmp],
                     str(RUNTIME), str(RUNTIME))
                os.replace(tmp, obj)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return obj


def _trampolines(kernels) -> str:
    out = ['#line 1 "<gpunet emulator trampolines>"']
    for k in kernels:
        if not k.extern_c:
            continue
        out.append(f'extern "C" __attribute__((visibility("default"))) void __emu_tramp_{k.name}(void** a) '
                   f'{{ ::emu::invoke(&{k.name}, a); }}')
        if k.launch_bounds:
            out.append(f'extern "C" __attribute__((visibility("default"), used)) const int __emu_lb_{k.name} = '
                       f'(int)({k.launch_bounds});')
    return "\n".join(out) + "\n"


def _static_shared_ranges(so: str, shared) -> list:
    """[offset, size] of every static __shared__ variable in the linked module, from its symbol table.
    (g++ ignores section attributes on statics of templates, so the runtime cannot find them by section.)
    A function-local variable `s` shows up as `f(...)::s`; a namespace-scope one as `s` or `ns::s`."""
    if not shared:
        return []
    nm = os.environ.get("GPUNET_EMU_NM", "nm")
    try:
        out = subprocess.run([nm, "-C", "-S", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise EmulatorError(f"cannot read the symbol table of {so} with '{nm}' ({e}); binutils is needed") from None
    local = {n for n, is_local in shared if is_local}
    glob = {n for n, is_local in shared if not is_local}
    ranges = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4 or parts[2] not in "bBdDu":
            continue
        addr, size, _, name = parts
        short = name.rsplit("::", 1)[-1] if "::" in name else None
        if (short is not None and (short in local or short in glob)) or name in glob:
            ranges[int(addr, 16)] = int(size, 16)
    return sorted([a, n] for a, n in ranges.items() if n > 0)


def _build(key: str, text: str, files, inc, defs, std, arch, path: str, cache: Path) -> dict:
    """Compile `text` into cache/<key>.so (+ .json with the kernel signatures); atomic."""
    rt = _runtime_object(cache)
    tmpdir = tempfile.mkdtemp(dir=cache, prefix=f"build-{key[:12]}-")
    try:
        tu = os.path.join(tmpdir, "module.cu.cpp")
        with open(tu, "w") as fh:
            fh.write(text)
        common = [_cxx(), "-x", "c++", f"-std={std}", "-I", str(EMU_DIR), "-include", "cuda_emu.h"]
        common += [f"-D__CUDA_ARCH__={arch}"] if arch else []
        common += [f"-I{d}" for d in inc] + list(defs)
        pre = _run(common + ["-E", "-D__EMU_PARSE_PASS", tu], tu, path, text)
        parsed = _src.parse_module(pre, files)
        kernels = parsed.kernels
        with open(tu, "a") as fh:
            fh.write(_trampolines(kernels))
        so_tmp = os.path.join(tmpdir, "module.so")
        _run(common + _CXXFLAGS + _LDFLAGS + [tu, "-x", "none", str(rt), "-o", so_tmp], tu, path, text)
        meta = {
            "path": path,
            "static_shared": _static_shared_ranges(so_tmp, parsed.shared),
            "kernels": [{
                "name": k.name, "extern_c": k.extern_c, "file": k.file, "line": k.line,
                "launch_bounds": bool(k.launch_bounds),
                "params": [{"name": p.name, "ctype": p.ctype, "pointer": p.pointer, "const": p.const,
                            "text": p.text, "problem": p.problem} for p in k.params],
            } for k in kernels],
        }
        os.replace(so_tmp, cache / f"{key}.so")
        _atomic_write(cache / f"{key}.json", json.dumps(meta, indent=1).encode())
        return meta
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class _Result(ctypes.Structure):
    """Mirror of struct EmuResult in emu_runtime.cpp."""
    _fields_ = [("code", ctypes.c_int32), ("signo", ctypes.c_int32), ("fault_addr", ctypes.c_uint64),
                ("fault_pc", ctypes.c_uint64), ("pc_offset", ctypes.c_uint64), ("in_module", ctypes.c_int32),
                ("has_thread", ctypes.c_int32), ("block", ctypes.c_int32 * 3), ("thread", ctypes.c_int32 * 3),
                ("where", ctypes.c_char * 256), ("msg", ctypes.c_char * 2048)]


# One launch at a time in the whole process: a module's runtime state is global, and a launch
# temporarily owns the process's fault signal handlers.
_launch_lock = threading.Lock()


class _Loaded:
    """A compiled module loaded with ctypes."""

    def __init__(self, so: Path, meta: dict):
        self.so = so
        self.meta = meta
        try:
            self.lib = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except OSError as e:
            raise EmulatorError(f"cannot load emulated module {so} ({meta.get('path')}): {e}") from None
        u32p = ctypes.POINTER(ctypes.c_uint32)
        launch_args = [ctypes.c_void_p, u32p, u32p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64,
                       ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Result)]
        self.lib.emu_launch.argtypes = launch_args
        self.lib.emu_launch.restype = ctypes.c_int
        self.lib.emu_launch_forked.argtypes = launch_args + [ctypes.c_int]
        self.lib.emu_launch_forked.restype = ctypes.c_int
        self.lib.emu_guarded_alloc.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_void_p),
                                               ctypes.POINTER(ctypes.c_uint64)]
        self.lib.emu_guarded_alloc.restype = ctypes.c_void_p
        self.lib.emu_guarded_readonly.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        self.lib.emu_guarded_free.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        self.lib.emu_static_shared_bytes.restype = ctypes.c_uint64
        ranges = meta.get("static_shared", [])
        offs = (ctypes.c_uint64 * max(1, len(ranges)))(*[r[0] for r in ranges])
        sizes = (ctypes.c_uint64 * max(1, len(ranges)))(*[r[1] for r in ranges])
        if self.lib.emu_set_static_shared(offs, sizes, len(ranges)) != 0:
            raise EmulatorError(f"cannot register the shared memory of {so}")
        self.static_shared = int(self.lib.emu_static_shared_bytes())
        if self.lib.emu_abi_version() != _header_version():
            raise EmulatorError(f"stale emulator module {so}: header version mismatch; clear {so.parent}")

    def symbol(self, name: str):
        return ctypes.cast(getattr(self.lib, name), ctypes.c_void_p).value

    def int_constant(self, name: str):
        try:
            return ctypes.c_int.in_dll(self.lib, name).value
        except ValueError:
            return None


_HEADER_VERSION = None


def _header_version() -> int:
    global _HEADER_VERSION
    if _HEADER_VERSION is None:
        m = re.search(r"#define GPUNET_EMU_HEADER_VERSION (\d+)", HEADER.read_text())
        _HEADER_VERSION = int(m.group(1))
    return _HEADER_VERSION


_memo: dict[str, _Loaded] = {}
_memo_lock = threading.Lock()


def clear_memory_cache():
    """Forget the in-process module memo (the on-disk cache stays): the next EmulatedModule loads
    from disk. For tests of the cache."""
    with _memo_lock:
        _memo.clear()


def _load(code: str, options, path: str | None) -> _Loaded:
    inc, defs, std, arch = _parse_options(options)
    name = path or "<kernel source>"
    base_dir = os.path.dirname(os.path.abspath(path)) if path else None
    try:
        exp = _src.expand_includes(code, name, inc, base_dir)
    except _src.SourceError as e:
        raise EmulatorCompileError(f"cannot compile {name} for the CPU emulator: {e}", file=name) from None
    text = _src.rewrite_extern_shared(exp.text)
    cache = _cache_dir()
    h = hashlib.sha256()
    for part in (str(_PYTHON_VERSION), _emu_sources_hash(), _cxx(), repr(_runtime_defines()), text, repr(inc),
                 repr(defs), std, repr(arch)):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:32]
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    so, js = cache / f"{key}.so", cache / f"{key}.json"
    meta = None
    if so.exists() and js.exists():
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(js.read_text())
    if meta is None:
        meta = _build(key, text, exp.files, inc, defs, std, arch, name, cache)
    loaded = _Loaded(so, meta)
    with _memo_lock:
        return _memo.setdefault(key, loaded)


# ------------------------------------------------------------------ argument checking
_DTYPES = {  # canonical C type -> numpy dtypes accepted for a pointer / for a by-value scalar
    "float": ("float32",), "double": ("float64",),
    "int": ("int32",), "unsigned int": ("uint32",),
    "long": ("int64",), "long long": ("int64",),
    "unsigned long": ("uint64",), "unsigned long long": ("uint64",),
    "short": ("int16",), "unsigned short": ("uint16",),
    "signed char": ("int8",), "unsigned char": ("uint8",), "char": ("int8",),
    "bool": ("bool",),
}
_PTR_EXTRA = {"char": ("int8", "uint8")}          # char* is used for raw bytes
_VECTOR_ELEM = {"char": "int8", "uchar": "uint8", "short": "int16", "ushort": "uint16", "int": "int32",
                "uint": "uint32", "float": "float32", "long": "int64", "ulong": "uint64", "longlong": "int64",
                "ulonglong": "uint64", "double": "float64"}
_VECTOR_ELEM_NAMES = {f"{b}{n}": (b, n) for b in _VECTOR_ELEM for n in (1, 2, 3, 4)}
_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double, "int32": ctypes.c_int32,
           "uint32": ctypes.c_uint32, "int64": ctypes.c_int64, "uint64": ctypes.c_uint64,
           "int16": ctypes.c_int16, "uint16": ctypes.c_uint16, "int8": ctypes.c_int8, "uint8": ctypes.c_uint8,
           "bool": ctypes.c_bool}


def _describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"numpy.ndarray of {v.dtype} with shape {v.shape}"
    if isinstance(v, np.generic):
        return f"numpy.{type(v).__name__}"
    return f"Python {type(v).__name__}"


class _ParamCheck:
    """Validates and converts one argument for one kernel parameter."""

    def __init__(self, kernel: str, index: int, p: dict):
        self.kernel, self.index, self.p = kernel, index, p
        self.name = p["name"] or f"#{index}"
        self.pointer, self.const = p["pointer"], p["const"]
        ctype = p["ctype"]
        self.vector = None
        if self.pointer and ctype in _VECTOR_ELEM_NAMES:
            base, n = _VECTOR_ELEM_NAMES[ctype]
            self.dtypes, self.vector = (_VECTOR_ELEM[base],), (n, ctype)
        elif self.pointer and ctype == "void":
            self.dtypes = None
        elif self.pointer:
            self.dtypes = _PTR_EXTRA.get(ctype, _DTYPES.get(ctype))
        else:
            self.dtypes = _DTYPES.get(ctype)
        self.decl = p["text"]

    def where(self) -> str:
        return f"kernel '{self.kernel}' argument {self.index} ('{self.name}', declared `{self.decl}`)"

    def convert(self, v):
        """-> (ctypes object holding the value, array or None)."""
        if self.pointer:
            if not isinstance(v, np.ndarray):
                hint = " (pass a NumPy array; it plays the device pointer)" if not isinstance(v, np.generic) else ""
                raise TypeError(f"{self.where()}: expected a NumPy array for a pointer, got {_describe(v)}{hint}")
            if self.dtypes is not None and v.dtype.name not in self.dtypes:
                raise TypeError(f"{self.where()}: expected an array of {' or '.join(self.dtypes)}, "
                                f"got {_describe(v)}")
            if not v.flags.c_contiguous:
                raise TypeError(f"{self.where()}: array must be C-contiguous (use np.ascontiguousarray)")
            if not self.const and not v.flags.writeable:
                raise TypeError(f"{self.where()}: the kernel may write through this pointer but the array is "
                                "read-only")
            if self.vector:
                n, vname = self.vector
                if v.size % n:
                    raise TypeError(f"{self.where()}: {vname} elements need a size divisible by {n}, got {v.size}")
                align = min(16, v.itemsize * n) if n in (2, 4) else v.itemsize
                if v.ctypes.data % align:
                    raise TypeError(f"{self.where()}: {vname} data must be {align}-byte aligned")
            return ctypes.c_void_p(v.ctypes.data), v
        if isinstance(v, np.ndarray):
            raise TypeError(f"{self.where()}: expected a numpy.{self.dtypes[0]} scalar, got {_describe(v)}")
        if not isinstance(v, np.generic) or v.dtype.name not in self.dtypes:
            want = self.dtypes[0]
            hint = f" (wrap it: np.{want}(value))" if isinstance(v, (int, float, bool)) else ""
            raise TypeError(f"{self.where()}: expected numpy.{want}, got {_describe(v)}{hint}")
        return _CTYPES[v.dtype.name](v.item()), None




def _dims(v, what: str):
    if isinstance(v, (int, np.integer)):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not 1 <= len(v) <= 3 or \
            not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise KernelLaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    return tuple(int(x) for x in v) + (1,) * (3 - len(v))


# ------------------------------------------------------------------ public classes
class EmulatedKernel:
    """A kernel of an EmulatedModule; call it like cupy.RawKernel: k(grid, block, args, shared_mem=0)."""

    def __init__(self, module: "EmulatedModule", info: dict):
        self.module = module
        self.name = info["name"]
        self.info = info
        self._loaded = module._loaded
        bad = [p for p in info["params"] if p["problem"]]
        if bad:
            raise TypeError(f"kernel '{self.name}' ({info['file']}:{info['line']}) cannot be emulated: parameter "
                            f"`{bad[0]['text']}`: {bad[0]['problem']}")
        self._checks = [_ParamCheck(self.name, i, p) for i, p in enumerate(info["params"])]
        self._tramp = self._loaded.symbol(f"__emu_tramp_{self.name}")
        lb = self._loaded.int_constant(f"__emu_lb_{self.name}") if info.get("launch_bounds") else None
        self.max_threads_per_block = lb if lb and lb > 0 else MAX_THREADS_PER_BLOCK
        self._max_dynamic_shared = 0
        self._kname = self.name.encode()

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        """Like CuPy's attribute: raise it to launch with more than 48 KiB of dynamic shared memory."""
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, n: int):
        if not 0 <= int(n) <= MAX_SHARED_OPTIN:
            raise KernelLaunchError(f"max_dynamic_shared_size_bytes={n} exceeds the device limit {MAX_SHARED_OPTIN}",
                                    kernel=self.name)
        self._max_dynamic_shared = int(n)

    @property
    def params(self):
        return [(p["name"], p["text"]) for p in self.info["params"]]

    def __repr__(self):
        return f"<EmulatedKernel {self.name} from {self.module.path}>"

    def _validate(self, grid, block, shared_mem):
        g, b = _dims(grid, "grid"), _dims(block, "block")
        if any(x < 1 for x in g + b):
            raise KernelLaunchError(f"kernel '{self.name}': invalid configuration argument: grid {g} and block {b} "
                                    "must be >= 1 in every dimension", kernel=self.name)
        for axis, x, lim in zip("xyz", b, MAX_BLOCK_DIM):
            if x > lim:
                raise KernelLaunchError(f"kernel '{self.name}': invalid configuration argument: block.{axis}={x} "
                                        f"exceeds {lim}", kernel=self.name)
        nthreads = b[0] * b[1] * b[2]
        if nthreads > MAX_THREADS_PER_BLOCK:
            raise KernelLaunchError(f"kernel '{self.name}': invalid configuration argument: {nthreads} threads per "
                                    f"block exceed {MAX_THREADS_PER_BLOCK}", kernel=self.name)
        if nthreads > self.max_threads_per_block:
            raise KernelLaunchError(f"kernel '{self.name}': too many resources requested for launch: {nthreads} "
                                    f"threads per block exceed its __launch_bounds__ ({self.max_threads_per_block})",
                                    kernel=self.name)
        for axis, x, lim in zip("xyz", g, MAX_GRID_DIM):
            if x > lim:
                raise KernelLaunchError(f"kernel '{self.name}': invalid configuration argument: grid.{axis}={x} "
                                        f"exceeds {lim}", kernel=self.name)
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise KernelLaunchError(f"kernel '{self.name}': shared_mem must be a non-negative int, got {shared_mem!r}",
                                    kernel=self.name)
        limit = max(DEFAULT_SHARED_LIMIT, self._max_dynamic_shared)
        if shared_mem > limit:
            hint = (" (set kernel.max_dynamic_shared_size_bytes first, as with CuPy)"
                    if shared_mem <= MAX_SHARED_OPTIN else "")
            raise KernelLaunchError(f"kernel '{self.name}': shared_mem={shared_mem} bytes exceeds the limit of "
                                    f"{limit} bytes{hint}", kernel=self.name)
        return g, b

    def __call__(self, grid, block, args, *, shared_mem: int = 0, stream=None, enable_cooperative_groups=False):
        if enable_cooperative_groups:
            raise NotImplementedError("the CUDA emulator does not support cooperative launches")
        g, b = self._validate(grid, block, shared_mem)
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel '{self.name}': args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self._checks):
            sig = ", ".join(p["text"] for p in self.info["params"])
            raise TypeError(f"kernel '{self.name}' takes {len(self._checks)} arguments ({sig}), got {len(args)}")
        values, arrays = [], []
        for chk, v in zip(self._checks, args):
            cval, arr = chk.convert(v)
            values.append(cval)
            arrays.append(arr)
        seed = get_schedule_seed()
        if _check_mode():
            self._launch_checked(g, b, int(shared_mem), values, arrays, seed)
        else:
            self._launch(g, b, int(shared_mem), values, seed)

    def _argv(self, values):
        argv = (ctypes.c_void_p * max(1, len(values)))()
        for i, v in enumerate(values):
            argv[i] = ctypes.addressof(v)
        return argv

    def _run(self, fn, g, b, shmem, values, seed, *extra):
        res = _Result()
        grid = (ctypes.c_uint32 * 3)(*g)
        block = (ctypes.c_uint32 * 3)(*b)
        argv = self._argv(values)
        use_seed = seed is not None
        seed_u64 = (seed if use_seed else 0) & 0xFFFFFFFFFFFFFFFF
        with _launch_lock:
            rc = fn(self._tramp, grid, block, shmem, ctypes.cast(argv, ctypes.c_void_p), seed_u64, int(use_seed),
                    self._kname, ctypes.byref(res), *extra)
        return rc, res

    def _launch(self, g, b, shmem, values, seed):
        rc, res = self._run(self._loaded.lib.emu_launch, g, b, shmem, values, seed)
        if rc:
            raise self._error(res)

    def _launch_checked(self, g, b, shmem, values, arrays, seed):
        """Check mode: guard-paged shared copies of every array, the launch in a forked child."""
        lib = self._loaded.lib
        regions = []           # (argument index, array, data address, base, length)
        try:
            values = list(values)
            for i, arr in enumerate(arrays):
                if arr is None:
                    continue
                base, length = ctypes.c_void_p(), ctypes.c_uint64()
                addr = lib.emu_guarded_alloc(arr.nbytes, ctypes.byref(base), ctypes.byref(length))
                if not addr:
                    raise EmulatorError("check mode: cannot allocate guarded memory", kernel=self.name)
                regions.append((i, arr, addr, base.value, length.value))
                if arr.nbytes:
                    ctypes.memmove(addr, arr.ctypes.data, arr.nbytes)
                if self._checks[i].const:
                    lib.emu_guarded_readonly(base.value, length.value, 1)
                values[i] = ctypes.c_void_p(addr)
            timeout = int(float(os.environ.get("GPUNET_EMU_TIMEOUT", "120")))
            rc, res = self._run(lib.emu_launch_forked, g, b, shmem, values, seed, timeout)
            for i, arr, addr, _, _ in regions:
                if not self._checks[i].const and arr.nbytes:
                    ctypes.memmove(arr.ctypes.data, addr, arr.nbytes)
            if rc:
                raise self._error(res, regions)
        finally:
            for _, _, _, base, length in regions:
                lib.emu_guarded_free(base, length)

    def _error(self, res: _Result, regions=()):
        msg = res.msg.decode(errors="replace")
        cls = _ERRORS.get(res.code, EmulatorError)
        block = tuple(res.block) if res.has_thread else None
        thread = tuple(res.thread) if res.has_thread else None
        m = re.search(r" at (\S+?):(\d+)", msg)
        file, line = (m.group(1), int(m.group(2))) if m else (None, None)
        if res.code == 4:
            addr = res.fault_addr
            for i, arr, data, base, length in regions:
                if base <= addr < base + length:
                    chk = self._checks[i]
                    side = "before the start" if addr < data else ("past the end" if addr >= data + arr.nbytes
                                                                   else "inside (write to a const argument?)")
                    msg += (f"\n  the address is {side} of argument {i} '{chk.name}' "
                            f"({arr.dtype}[{arr.size}], {arr.nbytes} bytes)")
            if res.in_module:
                loc = _addr2line(self._loaded.so, res.pc_offset)
                if loc:
                    msg += f"\n  faulting code: {loc}"
                    m = re.search(r"(\S+):(\d+)", loc)
                    if m:
                        file, line = m.group(1), int(m.group(2))
            elif res.where:
                msg += f"\n  faulting code: {res.where.decode(errors='replace')}"
            if not regions:
                msg += "\n  (memory may be corrupted: rerun with GPUNET_EMU_CHECK=1 to pin down out-of-bounds accesses)"
        return cls(msg, kernel=self.name, file=file, line=line, block=block, thread=thread)


def _addr2line(so: Path, offset: int) -> str | None:
    """'file:line (in function)' for a code offset in a module, innermost inline frame first."""
    tool = shutil.which("addr2line")
    if not tool:
        return None
    try:
        out = subprocess.run([tool, "-e", str(so), "-f", "-C", "-i", hex(offset)], capture_output=True, text=True,
                             timeout=20).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    frames = [(out[i].strip(), out[i + 1].strip().split(" (discriminator")[0]) for i in range(0, len(out) - 1, 2)]
    frames = [(fn, loc) for fn, loc in frames if loc and not loc.startswith("??")]
    if not frames:
        return None
    fn, loc = frames[0]
    s = f"{loc} (in {fn})"
    if len(frames) > 1:
        s += " inlined into " + ", ".join(f"{f} at {l}" for f, l in frames[1:])
    return s


class EmulatedModule:
    """Stand-in for cupy.RawModule running on the CPU.

    code: the CUDA source (NVRTC dialect); if None, it is read from `path`.
    options: NVRTC options; -I, -D, -U and -std are honoured, the rest ignored.
    path: file name used in diagnostics and __FILE__; relative quoted includes resolve from its directory.
    """

    def __init__(self, code: str | None = None, *, options=(), path: str | os.PathLike | None = None,
                 name_expressions=None, **_ignored):
        if name_expressions:
            raise NotImplementedError("name_expressions (templated kernels) are not supported by the CUDA "
                                      "emulator: export extern \"C\" entry points")
        self.path = os.fspath(path) if path is not None else None
        if code is None:
            if self.path is None:
                raise ValueError("EmulatedModule needs code= or path=")
            with open(self.path, encoding="utf-8") as fh:
                code = fh.read()
        self.code = code
        self.options = tuple(options or ())
        self._loaded = _load(code, self.options, self.path)
        self._kernels: dict[str, EmulatedKernel] = {}

    @property
    def kernel_names(self) -> list:
        return [k["name"] for k in self._loaded.meta["kernels"] if k["extern_c"]]

    @property
    def static_shared_bytes(self) -> int:
        """Static __shared__ bytes of the whole module (all kernels together)."""
        return self._loaded.static_shared

    def get_function(self, name: str) -> EmulatedKernel:
        k = self._kernels.get(name)
        if k is not None:
            return k
        info = next((k for k in self._loaded.meta["kernels"] if k["name"] == name), None)
        where = self.path or "<kernel source>"
        if info is None:
            raise KernelNotFoundError(f"no kernel '{name}' in {where}; available kernels: "
                                      f"{', '.join(self.kernel_names) or '(none)'}")
        if not info["extern_c"]:
            raise KernelNotFoundError(f"kernel '{name}' in {where} ({info['file']}:{info['line']}) is not declared "
                                      "extern \"C\": its name is mangled, so CuPy cannot find it by name either")
        k = self._kernels[name] = EmulatedKernel(self, info)
        return k
