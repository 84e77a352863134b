/*
 * avgpool2d.cu -- 2-D average pooling (count_include_pad=True): forward, and backward as a gather.
 *
 * LAYOUT (all C-contiguous, row-major):
 *   x, dx    (N, C, H, W)    NCHW input and its gradient
 *   y, dy    (N, C, OH, OW)  output and its gradient
 * OH = (H + 2*PH - KH) / SH + 1, OW likewise, padding at most half the kernel (PyTorch's rule). The
 * launcher validates with gpunet.ops.geometry.pool2d_geometry; the kernels re-check the arithmetic
 * and write nothing when it is inconsistent.
 *
 * INDEX FORMAT: flat row-major offsets, 32-bit (the launcher keeps every tensor, and the padded
 * extents H + 2*PH, W + 2*PW, below 2^31, and the kernels re-check; docs/kernel_limits.md); a
 * thread's (n, c) plane is reached as nc * plane size.
 *
 * NUMERICS: the divisor is always KH*KW (zero padding counts, PyTorch's default count_include_pad).
 *   forward   y = (sum of the window's real inputs, row-major order, from +0) / (KH*KW)
 *   backward  dx = (sum of dy over the windows covering the pixel, row-major output order) / (KH*KW)
 * The divisor is KH*KW formed in 64 bits and rounded once to T (as NumPy's dtype.type(kh*kw)): a
 * 65536 x 65536 window fits a 1x1 image with padding 32768. One correctly rounded division each; no reciprocal multiply, no fused multiply-add. NaN and inf
 * propagate as IEEE arithmetic does (no special cases: there is no tie rule for an average).
 *
 * BACKWARD is a GATHER: one thread per input pixel visits the output windows that cover it, so each
 * dx element is written once, summed in a fixed order: deterministic, no atomics.
 *
 * LAUNCH GEOMETRY: 1-D grid-stride loops, any grid and block size is correct:
 *   avgpool2d_fwd_*   one thread per output element (N*C*OH*OW)
 *   avgpool2d_bwd_*   one thread per input element (N*C*H*W)
 * Entry points: avgpool2d_{fwd,bwd}_{f32,f64}.
 */
#include "common.cuh"

namespace {

template <typename T>
__device__ void avgpool2d_fwd(const T* __restrict__ x, T* __restrict__ y, int N, int C, int H, int W, int KH,
                              int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    if (!gpunet::pool_geometry_ok(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)) return;
    const long long total = (long long)N * C * OH * OW;    // < 2^31: checked above
    const unsigned plane_out = (unsigned)(OH * OW);
    const T divisor = T((long long)KH * KW);   // the product overflows an int from 65536 x 32768 up
    for (long long i = gpunet::first_index(); i < total; i += gpunet::grid_stride()) {
        const unsigned nc = (unsigned)i / plane_out;         // (n, c) plane
        const int o = (int)((unsigned)i - nc * plane_out);    // offset inside the output plane
        const int oh = (int)((unsigned)o / (unsigned)OW), ow = o - oh * OW;
        const int hs = oh * SH - PH, ws = ow * SW - PW;     // window start, may be negative (padding)
        const int h0 = max(hs, 0), w0 = max(ws, 0), he = min(hs + KH, H), we = min(ws + KW, W);
        const T* plane = x + nc * (unsigned)(H * W);
        T acc = T(0);
        for (int h = h0; h < he; ++h)
            for (int w = w0; w < we; ++w) acc += plane[h * W + w];
        y[i] = acc / divisor;
    }
}

template <typename T>
__device__ void avgpool2d_bwd(const T* __restrict__ dy, T* __restrict__ dx, int N, int C, int H, int W, int KH,
                              int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    if (!gpunet::pool_geometry_ok(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)) return;
    const long long total = (long long)N * C * H * W;      // < 2^31: checked above
    const unsigned plane_in = (unsigned)(H * W), plane_out = (unsigned)(OH * OW);
    const T divisor = T((long long)KH * KW);   // the product overflows an int from 65536 x 32768 up
    for (long long i = gpunet::first_index(); i < total; i += gpunet::grid_stride()) {
        const unsigned nc = (unsigned)i / plane_in;          // (n, c) plane
        const int idx = (int)((unsigned)i - nc * plane_in);   // h*W + w inside it
        const int h = (int)((unsigned)idx / (unsigned)W), w = idx - h * W;
        int oh_lo, oh_hi, ow_lo, ow_hi;
        gpunet::covering_windows(h, KH, SH, PH, OH, oh_lo, oh_hi);
        gpunet::covering_windows(w, KW, SW, PW, OW, ow_lo, ow_hi);
        const T* g = dy + nc * plane_out;
        T acc = T(0);
        for (int oh = oh_lo; oh <= oh_hi; ++oh)
            for (int ow = ow_lo; ow <= ow_hi; ++ow) acc += g[oh * OW + ow];
        dx[i] = acc / divisor;
    }
}

}  // namespace

extern "C" __global__ void avgpool2d_fwd_f32(const float* x, float* y, int N, int C, int H, int W, int KH, int KW,
                                             int SH, int SW, int PH, int PW, int OH, int OW) {
    avgpool2d_fwd<float>(x, y, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void avgpool2d_bwd_f32(const float* dy, float* dx, int N, int C, int H, int W, int KH, int KW,
                                             int SH, int SW, int PH, int PW, int OH, int OW) {
    avgpool2d_bwd<float>(dy, dx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void avgpool2d_fwd_f64(const double* x, double* y, int N, int C, int H, int W, int KH, int KW,
                                             int SH, int SW, int PH, int PW, int OH, int OW) {
    avgpool2d_fwd<double>(x, y, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}

extern "C" __global__ void avgpool2d_bwd_f64(const double* dy, double* dx, int N, int C, int H, int W, int KH,
                                             int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    avgpool2d_bwd<double>(dy, dx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW);
}
