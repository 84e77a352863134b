/*
 * maxpool2d.cu -- 2-D max pooling with a cached argmax: forward, and backward as a gather.
 *
 * LAYOUT (all C-contiguous, row-major):
 *   x, dx    (N, C, H, W)    NCHW input and its gradient
 *   y, dy    (N, C, OH, OW)  output and its gradient
 *   argmax   (N, C, OH, OW)  int32
 * OH = (H + 2*PH - KH) / SH + 1, OW likewise, padding at most half the kernel (PyTorch's rule). The
 * launcher validates with gpunet.ops.geometry.pool2d_geometry; the kernels re-check the arithmetic
 * and write nothing when it is inconsistent.
 *
 * INDEX FORMAT: argmax is the flat index h*W + w of the chosen input inside its own (n, c) plane
 * (PyTorch's format), always a real input position, never padding. All offsets are 32-bit: the
 * launcher keeps x and y below 2^31 elements and the padded extents H + 2*PH, W + 2*PW below 2^31
 * (window ends are ints), and the kernels re-check (docs/kernel_limits.md).
 *
 * TIE / NaN RULES (gpunet.ops.interface.Ops.max_pool2d_forward):
 *   - padding is -inf: it never wins, and every window holds at least one real input (padding <= K/2);
 *   - the window is scanned in row-major order (kh outer, kw inner) and a value replaces the current
 *     maximum only when strictly greater, so ties go to the FIRST maximum;
 *   - NaN propagates: the first NaN in scan order is the output and its position the argmax (the scan
 *     stops there); a window whose real inputs are all -inf outputs -inf with argmax at its first real
 *     input.
 *
 * BACKWARD is a GATHER (as in ATen's DilatedMaxPool2d.cu): one thread per input pixel visits the
 * output windows that cover it, in row-major output order (oh outer, ow inner), and adds dy where the
 * cached argmax points at the pixel. Each dx element is written once by one thread, summed in a fixed
 * order starting from +0: deterministic, no atomics, and the same order as scattering dy over the
 * outputs in row-major order (NumPy's np.add.at), so results match the NumPy reference bit for bit.
 *
 * LAUNCH GEOMETRY: 1-D grid-stride loops, any grid and block size is correct:
 *   maxpool2d_fwd_*   one thread per output element (N*C*OH*OW)
 *   maxpool2d_bwd_*   one thread per input element (N*C*H*W)
 * Entry points: maxpool2d_{fwd,bwd}_{f32,f64}.
 */
#include "common.cuh"

namespace {

template <typename T>
__device__ void maxpool2d_fwd(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax, int N,
                              int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH,
                              int OW) {
    if (!gpunet::pool_geometry_ok(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)) return;
    const long long total = (long long)N * C * OH * OW;    // < 2^31: checked above
    const unsigned plane_out = (unsigned)(OH * OW);
    for (long long i = gpunet::first_index(); i < total; i += gpunet::grid_stride()) {
        const unsigned nc = (unsigned)i / plane_out;         // (n, c) plane
        const int o = (int)((unsigned)i - nc * plane_out);    // offset inside the output plane
        const int oh = (int)((unsigned)o / (unsigned)OW), ow = o - oh * OW;
        const int hs = oh * SH - PH, ws = ow * SW - PW;     // window start, may be negative (padding)
        const int he = min(hs + KH, H), we = min(ws + KW, W);
        const int h0 = max(hs, 0), w0 = max(ws, 0);         // first real row / column of the window
        const T* plane = x + nc * (unsigned)(H * W);
        T best = gpunet::neg_inf<T>();
        int best_idx = h0 * W + w0;
        bool nan_found = false;
        for (int h = h0; h < he && !nan_found; ++h) {
            for (int w = w0; w < we; ++w) {
                const int idx = h * W + w;
                const T v = plane[idx];
                if (gpunet::is_nan(v)) {   // first NaN wins and ends the scan
                    best = v;
                    best_idx = idx;
                    nan_found = true;
                    break;
                }
                if (v > best) {            // strictly greater: ties keep the first maximum
                    best = v;
                    best_idx = idx;
                }
            }
        }
        y[i] = best;
        argmax[i] = best_idx;
    }
}

template <typename T>
__device__ void maxpool2d_bwd(const T* __restrict__ dy, const int* __restrict__ argmax, T* __restrict__ dx, int N,
                              int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH,
                              int OW) {
    if (!gpunet::pool_geometry_ok(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)) return;
    const long long total = (long long)N * C * H * W;      // < 2^31: checked above
    const unsigned plane_in = (unsigned)(H * W), plane_out = (unsigned)(OH * OW);
    for (long long i = gpunet::first_index(); i < total; i += gpunet::grid_stride()) {
        const unsigned nc = (unsigned)i / plane_in;          // (n, c) plane
        const int idx = (int)((unsigned)i - nc * plane_in);   // h*W + w inside it
        const int h = (int)((unsigned)idx / (unsigned)W), w = idx - h * W;
        int oh_lo, oh_hi, ow_lo, ow_hi;
        gpunet::covering_windows(h, KH, SH, PH, OH, oh_lo, oh_hi);
        gpunet::covering_windows(w, KW, SW, PW, OW, ow_lo, ow_hi);
        const int* am = argmax + nc * plane_out;
        const T* g = dy + nc * plane_out;
        T acc = T(0);
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const int o = oh * OW + ow;
                if (am[o] == idx) acc += g[o];
            }
        }
        dx[i] = acc;
    }
}

}  // namespace

extern "C" __global__ void maxpool2d_fwd_f32(const float* x, float* y, int* argmax, int N, int C, int H, int W,
                                             int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    maxpool2d_fwd<float>(x, y, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void maxpool2d_bwd_f32(const float* dy, const int* argmax, float* dx, int N, int C, int H,
                                             int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    maxpool2d_bwd<float>(dy, argmax, dx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void maxpool2d_fwd_f64(const double* x, double* y, int* argmax, int N, int C, int H, int W,
                                             int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    maxpool2d_fwd<double>(x, y, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void maxpool2d_bwd_f64(const double* dy, const int* argmax, double* dx, int N, int C, int H,
                                             int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    maxpool2d_bwd<double>(dy, argmax, dx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}
