// AVX2 kernel of the preprocessing's vertical filter: weighted sum of uint8 rows into floats.
// Only called when cpu_has_avx2_fma().
#include <cstring>

#include "preprocess.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace autoweld::detail {

void weighted_rows_avx2(const std::uint8_t* const* rows, const float* weights, int count,
                        std::size_t n, float* out) {
#if defined(__AVX2__)
    std::size_t k = 0;
    for (; k + 32 <= n; k += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < count; ++t) {
            const __m256 w = _mm256_set1_ps(weights[t]);
            const __m256i bytes = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(rows[t] + k));
            const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
            a0 = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), a3);
        }
        _mm256_storeu_ps(out + k, a0);
        _mm256_storeu_ps(out + k + 8, a1);
        _mm256_storeu_ps(out + k + 16, a2);
        _mm256_storeu_ps(out + k + 24, a3);
    }
    for (; k < n; ++k) {  // tail columns
        float sum = 0.f;
        for (int t = 0; t < count; ++t) sum += weights[t] * static_cast<float>(rows[t][k]);
        out[k] = sum;
    }
#else
    weighted_rows_scalar(rows, stride, weights, count, n, out);
#endif
}

}  // namespace autoweld::detail
