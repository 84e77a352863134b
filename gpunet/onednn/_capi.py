"""ctypes declarations of the oneDNN 3.x C API we use, and loading of the library.

Every constant below was read from oneDNN v3.2's public headers (include/oneapi/dnnl/dnnl_types.h,
dnnl_common_types.h at tag v3.2) and is checked by compiling a C program against those headers:
`python scripts/onednn_abi_check.py --include DIR` (see docs/onednn.md). Nothing here is guessed.
The opaque-handle API of 3.x (memory descriptors created with dnnl_memory_desc_create_with_tag,
primitive descriptors from dnnl_<primitive>_primitive_desc_create) has no C structs to lay out
except dnnl_exec_arg_t {int arg; dnnl_memory_t memory;} and dnnl_version_t.

Loading: GPUNET_ONEDNN_LIB names the shared object when set (a path to a missing file is an error,
not a search; a bare name goes to the dynamic loader); otherwise libdnnl.so.3 from the
`onednn-cpu-gomp` wheel (installed into <prefix>/lib), then
the system's. `load()` returns the library or raises OnednnUnavailable whose message is one line
saying why; the reason is remembered, so a failed load is tried once per process.
"""
from __future__ import annotations

import ctypes
import os
import sys

# --- dnnl_status_t (dnnl_common_types.h) ---
STATUS = {0: "success", 1: "out_of_memory", 2: "invalid_arguments", 3: "unimplemented",
          4: "last_impl_reached", 5: "runtime_error", 6: "not_required", 7: "invalid_graph",
          8: "invalid_graph_op", 9: "invalid_shape", 10: "invalid_data_type"}
# --- enums ---
CONSTANTS = {
    "dnnl_success": 0,
    "dnnl_cpu": 1,                        # dnnl_engine_kind_t
    "dnnl_f32": 3, "dnnl_s32": 4, "dnnl_u8": 6, "dnnl_f64": 7,   # dnnl_data_type_t
    "dnnl_format_tag_undef": 0, "dnnl_format_tag_any": 1,   # dnnl_format_tag_t
    "dnnl_a": 2, "dnnl_ab": 3, "dnnl_abcd": 5,              # x, nc, nchw / oihw
    "dnnl_stream_default_flags": 1,
    "dnnl_forward_training": 64, "dnnl_forward_inference": 96,   # dnnl_prop_kind_t
    "dnnl_backward": 128, "dnnl_backward_data": 160, "dnnl_backward_weights": 192,
    "dnnl_convolution_direct": 0x1, "dnnl_eltwise_relu": 0x20,   # dnnl_alg_kind_t
    "dnnl_pooling_max": 0x1ff, "dnnl_pooling_avg_include_padding": 0x2ff,
    "dnnl_binary_add": 0x1fff0, "dnnl_binary_mul": 0x1fff1, "dnnl_binary_sub": 0x1fff5, "dnnl_binary_gt": 0x1fff7,
    "dnnl_use_global_stats": 0x1, "dnnl_use_scale": 0x2, "dnnl_use_shift": 0x4,  # normalization flags
    "dnnl_query_src_md": 129, "dnnl_query_diff_src_md": 130, "dnnl_query_weights_md": 131,
    "dnnl_query_diff_weights_md": 132, "dnnl_query_dst_md": 133, "dnnl_query_diff_dst_md": 134,
    "dnnl_query_workspace_md": 135, "dnnl_query_impl_info_str": 8, "dnnl_query_data_type": 258,
    "DNNL_ARG_SRC": 1, "DNNL_ARG_DST": 17, "DNNL_ARG_WEIGHTS": 33, "DNNL_ARG_BIAS": 41,
    "DNNL_ARG_MEAN": 49, "DNNL_ARG_VARIANCE": 50, "DNNL_ARG_SCALE": 51, "DNNL_ARG_SHIFT": 52,
    "DNNL_ARG_WORKSPACE": 64, "DNNL_ARG_DIFF_SRC": 129, "DNNL_ARG_DIFF_DST": 145,
    "DNNL_ARG_DIFF_WEIGHTS": 161, "DNNL_ARG_DIFF_BIAS": 169, "DNNL_ARG_DIFF_SCALE": 255,
    "DNNL_ARG_DIFF_SHIFT": 256, "DNNL_ARG_FROM": 1, "DNNL_ARG_TO": 17,
    "DNNL_ARG_SRC_0": 1, "DNNL_ARG_SRC_1": 2, "DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE": 32768,
    "DNNL_MAX_NDIMS": 12,
}
globals().update(CONSTANTS)
FORMAT_TAG_ANY = CONSTANTS["dnnl_format_tag_any"]
DATA_TYPE_NAMES = {3: "f32", 4: "s32", 6: "u8", 7: "f64"}

dim_t = ctypes.c_int64
dims_t = dim_t * 12                      # dnnl_dims_t: dnnl_dim_t[DNNL_MAX_NDIMS]
handle = ctypes.c_void_p                 # every dnnl_*_t is an opaque pointer
MEMORY_ALLOCATE = ctypes.c_void_p(ctypes.c_size_t(-1).value)   # DNNL_MEMORY_ALLOCATE ((void *)(size_t)-1)


class exec_arg_t(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", handle)]


class version_t(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


_P, _I, _U, _S, _F = ctypes.POINTER(handle), ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_float
_D = ctypes.POINTER(dim_t)   # const dnnl_dims_t (an array parameter decays to a pointer)
# name -> (restype, argtypes); restype None means dnnl_status_t (int), checked by the caller
SIGNATURES = {
    "dnnl_engine_create": (None, [_P, _I, _S]),
    "dnnl_engine_destroy": (None, [handle]),
    "dnnl_stream_create": (None, [_P, handle, _U]),
    "dnnl_stream_wait": (None, [handle]),
    "dnnl_stream_destroy": (None, [handle]),
    "dnnl_memory_desc_create_with_tag": (None, [_P, _I, _D, _I, _I]),
    "dnnl_memory_desc_destroy": (None, [handle]),
    "dnnl_memory_desc_equal": (_I, [handle, handle]),
    "dnnl_memory_desc_get_size": (_S, [handle]),
    "dnnl_memory_desc_query": (None, [handle, _I, ctypes.c_void_p]),
    "dnnl_memory_create": (None, [_P, handle, handle, ctypes.c_void_p]),
    "dnnl_memory_destroy": (None, [handle]),
    "dnnl_memory_set_data_handle": (None, [handle, ctypes.c_void_p]),
    "dnnl_primitive_desc_query_md": (handle, [handle, _I, _I]),
    "dnnl_primitive_desc_query": (None, [handle, _I, _I, ctypes.c_void_p]),
    "dnnl_primitive_desc_destroy": (None, [handle]),
    "dnnl_primitive_create": (None, [_P, handle]),
    "dnnl_primitive_execute": (None, [handle, handle, _I, ctypes.POINTER(exec_arg_t)]),
    "dnnl_primitive_destroy": (None, [handle]),
    "dnnl_reorder_primitive_desc_create": (None, [_P, handle, handle, handle, handle, handle]),
    "dnnl_convolution_forward_primitive_desc_create":
        (None, [_P, handle, _I, _I, handle, handle, handle, handle, _D, _D, _D, _D, handle]),
    "dnnl_convolution_backward_data_primitive_desc_create":
        (None, [_P, handle, _I, handle, handle, handle, _D, _D, _D, _D, handle, handle]),
    "dnnl_convolution_backward_weights_primitive_desc_create":
        (None, [_P, handle, _I, handle, handle, handle, handle, _D, _D, _D, _D, handle, handle]),
    "dnnl_pooling_forward_primitive_desc_create":
        (None, [_P, handle, _I, _I, handle, handle, _D, _D, _D, _D, _D, handle]),
    "dnnl_pooling_backward_primitive_desc_create":
        (None, [_P, handle, _I, handle, handle, _D, _D, _D, _D, _D, handle, handle]),
    "dnnl_batch_normalization_forward_primitive_desc_create":
        (None, [_P, handle, _I, handle, handle, _F, _U, handle]),
    "dnnl_batch_normalization_backward_primitive_desc_create":
        (None, [_P, handle, _I, handle, handle, handle, _F, _U, handle, handle]),
    "dnnl_primitive_attr_create": (None, [_P]),
    "dnnl_primitive_attr_destroy": (None, [handle]),
    "dnnl_primitive_attr_set_post_ops": (None, [handle, handle]),
    "dnnl_post_ops_create": (None, [_P]),
    "dnnl_post_ops_destroy": (None, [handle]),
    "dnnl_post_ops_append_eltwise": (None, [handle, _I, _F, _F]),
    "dnnl_post_ops_append_binary": (None, [handle, _I, handle]),
    "dnnl_binary_primitive_desc_create": (None, [_P, handle, _I, handle, handle, handle, handle]),
    "dnnl_version": (ctypes.POINTER(version_t), []),
}

ENV_LIB = "GPUNET_ONEDNN_LIB"
SONAME = "libdnnl.so.3"
MIN_VERSION = (3, 2)    # constants checked against the v3.2 headers (and v3.12, PyTorch's copy: the same)


class OnednnUnavailable(RuntimeError):
    """The oneDNN library cannot be used; str() is one line saying why."""


class OnednnError(RuntimeError):
    """A oneDNN call returned an error status. The message names the primitive, the shapes and the status."""

    def __init__(self, call: str, status: int, what: str):
        self.call, self.status = call, status
        super().__init__(f"oneDNN {what}: {call} returned status {status} ({STATUS.get(status, 'unknown')})")


_lib = None
_reason: str | None = None


def _candidates():
    path = os.environ.get(ENV_LIB, "").strip()
    if path:
        return [path], True
    found = [os.path.join(p, "lib", SONAME) for p in dict.fromkeys((sys.prefix, sys.base_prefix))]
    return [p for p in found if os.path.isfile(p)] + [SONAME], False


def _open():
    from gpunet.threads import set_openmp_idle
    set_openmp_idle()   # before libgomp starts with oneDNN: idle OpenMP workers must not spin (gpunet.threads)
    paths, explicit = _candidates()
    if explicit and os.sep in paths[0] and not os.path.isfile(paths[0]):
        raise OnednnUnavailable(f"{ENV_LIB}={paths[0]}: no such file")
    errors = []
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(str(e).splitlines()[0])
    hint = "" if explicit else " (pip install 'gpunet[cpu]' installs onednn-cpu-gomp)"
    raise OnednnUnavailable(f"cannot load oneDNN: {'; '.join(errors)}{hint}")


def _declare(lib):
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise OnednnUnavailable(f"the oneDNN library lacks {name} (expected oneDNN >= 3.2)") from None
        fn.restype = ctypes.c_int if restype is None else restype
        fn.argtypes = argtypes
    v = lib.dnnl_version().contents
    if v.major != MIN_VERSION[0] or v.minor < MIN_VERSION[1]:
        raise OnednnUnavailable(f"oneDNN {v.major}.{v.minor}.{v.patch} found, this binding needs 3.x with x >= 2")


def load():
    """The library with its functions declared, or OnednnUnavailable (one line) saying why not."""
    global _lib, _reason
    if _lib is not None:
        return _lib
    if _reason is not None:
        raise OnednnUnavailable(_reason)
    try:
        lib = _open()
        _declare(lib)
    except OnednnUnavailable as e:
        _reason = str(e)
        raise
    _lib = lib
    return lib


def reason() -> str | None:
    """None when oneDNN loads, else the one-line reason it does not."""
    try:
        load()
    except OnednnUnavailable as e:
        return str(e)
    return None


def version() -> str:
    v = load().dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def _reset_for_tests() -> None:
    """Forget a load attempt, so a test can point GPUNET_ONEDNN_LIB elsewhere and load again."""
    global _lib, _reason
    _lib, _reason = None, None
