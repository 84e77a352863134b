/*
 * dropout.cu -- inverted-dropout masks from the counter-based Philox4x64-10 generator, bit for bit
 * the stream of NumPy's `np.random.Philox(key=seed, counter=counter).random_raw()`.
 *
 * LAYOUT: `mask` is any C-contiguous tensor seen as a flat array of n elements (the mask does not
 * depend on the shape, only on the element's flat row-major index k).
 *
 * THE STREAM (NumPy's philox.h): the state is a 256-bit counter (4 x 64-bit words, word 0 least
 * significant) and a 128-bit key (key0 = seed mod 2^64, key1 = seed >> 64). Each draw of four words
 * first increments the counter by one (with carry, wrapping at 2^256), then outputs the four words of
 * Philox4x64-10(counter, key) in order. So raw word k comes from counter + 1 + k/4, output word k%4.
 * Philox4x64-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; Random123):
 * ten rounds of
 *     (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2          (64 x 64 -> 128-bit products)
 *     c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
 * with the key bumped by the Weyl constants (k0 += W0, k1 += W1, mod 2^64) before every round but
 * the first. The high halves come from __umul64hi (a CUDA builtin, provided by the emulator too).
 *
 * MASK RULE (gpunet.ops.interface.Ops.dropout_mask): u = (word >> 11) * 2^-53, a double in [0, 1)
 * computed exactly; element k is dropped (0) when u < p, else it is `scale` = 1/(1-p) (computed by the
 * launcher in double and rounded once to the mask's dtype, as NumPy's astype does). No NaN can arise.
 *
 * LAUNCH GEOMETRY: 1-D grid-stride loop, one thread per counter block of 4 words = 4 consecutive
 * mask elements (the last block may be partial); any grid and block size is correct.
 * Entry points: dropout_mask_f32, dropout_mask_f64.
 */
#include "common.cuh"

namespace {

// Philox4x64 multipliers and Weyl key increments (Random123, philox.h).
constexpr unsigned long long PHILOX_M0 = 0xD2E7470EE14C6C93ULL;
constexpr unsigned long long PHILOX_M1 = 0xCA5A826395121157ULL;
constexpr unsigned long long PHILOX_W0 = 0x9E3779B97F4A7C15ULL;   // golden ratio
constexpr unsigned long long PHILOX_W1 = 0xBB67AE8584CAA73BULL;   // sqrt(3) - 1
constexpr int PHILOX_ROUNDS = 10;
constexpr int WORDS_PER_BLOCK = 4;                                  // 64-bit words per counter value
constexpr double TWO_POW_M53 = 1.0 / 9007199254740992.0;            // 2^-53: 53-bit mantissa -> [0, 1)

struct U256 { unsigned long long w[4]; };

// c + 1 + b with carry through the four words (mod 2^256), as NumPy increments before each draw.
__device__ __forceinline__ U256 counter_at(const U256& base, unsigned long long b) {
    U256 r;
    unsigned long long add = b + 1ULL;
    unsigned long long carry = (add == 0ULL) ? 1ULL : 0ULL;        // b = 2^64 - 1: b + 1 wrapped
    r.w[0] = base.w[0] + add;
    carry += (r.w[0] < add) ? 1ULL : 0ULL;
    for (int i = 1; i < 4; ++i) {
        r.w[i] = base.w[i] + carry;
        carry = (carry != 0ULL && r.w[i] == 0ULL) ? 1ULL : 0ULL;   // carry is 0 or 1 from here on
    }
    return r;
}

__device__ __forceinline__ U256 philox4x64_10(U256 c, unsigned long long k0, unsigned long long k1) {
    for (int r = 0; r < PHILOX_ROUNDS; ++r) {
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        unsigned long long hi0 = __umul64hi(PHILOX_M0, c.w[0]), lo0 = PHILOX_M0 * c.w[0];
        unsigned long long hi1 = __umul64hi(PHILOX_M1, c.w[2]), lo1 = PHILOX_M1 * c.w[2];
        U256 n;
        n.w[0] = hi1 ^ c.w[1] ^ k0;
        n.w[1] = lo1;
        n.w[2] = hi0 ^ c.w[3] ^ k1;
        n.w[3] = lo0;
        c = n;
    }
    return c;
}

template <typename T>
__device__ void dropout_mask(T* __restrict__ mask, long long n, unsigned long long key0, unsigned long long key1,
                             unsigned long long ctr0, unsigned long long ctr1, unsigned long long ctr2,
                             unsigned long long ctr3, double p, T scale) {
    if (n <= 0) return;
    const U256 base = {{ctr0, ctr1, ctr2, ctr3}};
    const long long blocks = (n + WORDS_PER_BLOCK - 1) / WORDS_PER_BLOCK;
    for (long long b = gpunet::first_index(); b < blocks; b += gpunet::grid_stride()) {
        const U256 words = philox4x64_10(counter_at(base, (unsigned long long)b), key0, key1);
        const long long k0 = b * WORDS_PER_BLOCK;
        for (int j = 0; j < WORDS_PER_BLOCK; ++j) {
            if (k0 + j >= n) break;
            const double u = (double)(words.w[j] >> 11) * TWO_POW_M53;   // exact: 53 bits
            mask[k0 + j] = (u < p) ? T(0) : scale;
        }
    }
}

}  // namespace

extern "C" __global__ void dropout_mask_f32(float* mask, long long n, unsigned long long key0,
                                            unsigned long long key1, unsigned long long ctr0,
                                            unsigned long long ctr1, unsigned long long ctr2,
                                            unsigned long long ctr3, double p, float scale) {
    dropout_mask<float>(mask, n, key0, key1, ctr0, ctr1, ctr2, ctr3, p, scale);
}

extern "C" __global__ void dropout_mask_f64(double* mask, long long n, unsigned long long key0,
                                            unsigned long long key1, unsigned long long ctr0,
                                            unsigned long long ctr1, unsigned long long ctr2,
                                            unsigned long long ctr3, double p, double scale) {
    dropout_mask<double>(mask, n, key0, key1, ctr0, ctr1, ctr2, ctr3, p, scale);
}
