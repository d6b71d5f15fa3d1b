// AVX2+FMA kernel of the coreset selection (coreset_internal.hpp). Compiled with -mavx2 -mfma;
// dispatched (coreset_select in coreset.cpp) only when the CPU runs Isa::avx2.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

#include "coreset_internal.hpp"

namespace autoweld::detail {

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

}  // namespace autoweld::detail
