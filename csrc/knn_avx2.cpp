// AVX2+FMA kernels of the numeric core. Compiled with -mavx2 -mfma; called only when
// autoweld::cpu_has_avx2_fma() is true.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

#include "coreset.hpp"
#include "knn.hpp"

namespace autoweld {
namespace detail {

namespace {

// 16 queries (two 8-lane vectors, packed as qpack[k][16]) x 6 bank rows (broadcast straight
// from the row-major bank, so the bank never needs packing). 12 accumulators + 2 query vectors
// + 1 broadcast = 15 of the 16 ymm registers.
inline void micro_16x6(const float* qpack, const float* b0, const float* b1, const float* b2,
                       const float* b3, const float* b4, const float* b5, std::size_t kc,
                       float* out, bool accumulate) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
        c00 = _mm256_loadu_ps(out + 0);
        c01 = _mm256_loadu_ps(out + 8);
        c10 = _mm256_loadu_ps(out + 16);
        c11 = _mm256_loadu_ps(out + 24);
        c20 = _mm256_loadu_ps(out + 32);
        c21 = _mm256_loadu_ps(out + 40);
        c30 = _mm256_loadu_ps(out + 48);
        c31 = _mm256_loadu_ps(out + 56);
        c40 = _mm256_loadu_ps(out + 64);
        c41 = _mm256_loadu_ps(out + 72);
        c50 = _mm256_loadu_ps(out + 80);
        c51 = _mm256_loadu_ps(out + 88);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 =
            _mm256_setzero_ps();
    }
    for (std::size_t k = 0; k < kc; ++k) {
        const __m256 q0 = _mm256_load_ps(qpack + 16 * k);
        const __m256 q1 = _mm256_load_ps(qpack + 16 * k + 8);
        __m256 b = _mm256_broadcast_ss(b0 + k);
        c00 = _mm256_fmadd_ps(q0, b, c00);
        c01 = _mm256_fmadd_ps(q1, b, c01);
        b = _mm256_broadcast_ss(b1 + k);
        c10 = _mm256_fmadd_ps(q0, b, c10);
        c11 = _mm256_fmadd_ps(q1, b, c11);
        b = _mm256_broadcast_ss(b2 + k);
        c20 = _mm256_fmadd_ps(q0, b, c20);
        c21 = _mm256_fmadd_ps(q1, b, c21);
        b = _mm256_broadcast_ss(b3 + k);
        c30 = _mm256_fmadd_ps(q0, b, c30);
        c31 = _mm256_fmadd_ps(q1, b, c31);
        b = _mm256_broadcast_ss(b4 + k);
        c40 = _mm256_fmadd_ps(q0, b, c40);
        c41 = _mm256_fmadd_ps(q1, b, c41);
        b = _mm256_broadcast_ss(b5 + k);
        c50 = _mm256_fmadd_ps(q0, b, c50);
        c51 = _mm256_fmadd_ps(q1, b, c51);
    }
    _mm256_storeu_ps(out + 0, c00);
    _mm256_storeu_ps(out + 8, c01);
    _mm256_storeu_ps(out + 16, c10);
    _mm256_storeu_ps(out + 24, c11);
    _mm256_storeu_ps(out + 32, c20);
    _mm256_storeu_ps(out + 40, c21);
    _mm256_storeu_ps(out + 48, c30);
    _mm256_storeu_ps(out + 56, c31);
    _mm256_storeu_ps(out + 64, c40);
    _mm256_storeu_ps(out + 72, c41);
    _mm256_storeu_ps(out + 80, c50);
    _mm256_storeu_ps(out + 88, c51);
}

}  // namespace

void panel_dots_avx2(const float* qpack, const float* bank, std::size_t dim, std::size_t kc_begin,
                     std::size_t kc_end, std::size_t j0, std::size_t j1, float* out,
                     bool accumulate) {
    const std::size_t kc = kc_end - kc_begin;
    const float* q = qpack + kPanel * kc_begin;
    alignas(32) float tail[kPanel * kBankTile];
    for (std::size_t j = j0; j < j1; j += kBankTile) {
        const std::size_t rows = std::min(kBankTile, j1 - j);
        const float* r[kBankTile];
        for (std::size_t t = 0; t < kBankTile; ++t)
            r[t] = bank + (j + std::min(t, rows - 1)) * dim + kc_begin;
        float* dst = out + (j - j0) * kPanel;
        if (rows == kBankTile) {
            micro_16x6(q, r[0], r[1], r[2], r[3], r[4], r[5], kc, dst, accumulate);
        } else {
            if (accumulate) std::copy(dst, dst + rows * kPanel, tail);
            micro_16x6(q, r[0], r[1], r[2], r[3], r[4], r[5], kc, tail, accumulate);
            std::copy(tail, tail + rows * kPanel, dst);
        }
    }
}

// Squared distances of rows [begin, end) of x (n x dim, norms xn) to the centre c (norm cn),
// merged into min_dist (entries < 0 mark selected points and are left alone). Returns the
// first index of the largest min_dist in the range (or `end` when every entry is selected).
std::size_t coreset_update_avx2(const float* x, const float* xn, std::size_t dim,
                                std::size_t begin, std::size_t end, const float* c, float cn,
                                float* min_dist, float* best_value) {
    std::size_t best = end;
    float best_v = -1.0f;
    const std::size_t dv = dim & ~std::size_t{7};
    for (std::size_t i = begin; i < end; ++i) {
        float m = min_dist[i];
        if (m >= 0.0f) {
            const float* xi = x + i * dim;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            std::size_t d = 0;
            for (; d + 16 <= dv; d += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + d), _mm256_loadu_ps(c + d), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + d + 8), _mm256_loadu_ps(c + d + 8), a1);
            }
            for (; d < dv; d += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + d), _mm256_loadu_ps(c + d), a0);
            a0 = _mm256_add_ps(a0, a1);
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            float dot = _mm_cvtss_f32(s);
            for (; d < dim; ++d) dot += xi[d] * c[d];
            float dist = std::max(0.0f, xn[i] + cn - 2.0f * dot);
            if (dist < m) {
                m = dist;
                min_dist[i] = m;
            }
            if (m > best_v) {
                best_v = m;
                best = i;
            }
        }
    }
    *best_value = best_v;
    return best;
}

}  // namespace detail
}  // namespace autoweld
