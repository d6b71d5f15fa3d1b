// AVX2 kernel of the preprocessing's vertical filter: weighted sum of uint8 rows into floats.
// Dispatched only when the CPU runs Isa::avx2.
#include <cstring>

#include "preprocess_kernels.hpp"

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
    weighted_rows_scalar(rows, weights, count, n, out);
#endif
}

#if defined(__AVX2__)
namespace {
// Sum of the 8 lanes of each of a[0..7], as one vector (lane k = sum of a[k]).
inline __m256 sum_lanes8(const __m256* a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
}  // namespace
#endif

void filter_columns_avx2(const float* row, const float* weights, int stride, const int* first,
                         int count, float* out) {
#if defined(__AVX2__)
    int j = 0;
    // Eight outputs at a time: one 8-lane accumulator each, then one transposing reduction.
    for (; j + 8 <= count; j += 8) {
        __m256 acc[8];
        for (int o = 0; o < 8; ++o) {
            const float* v = row + first[j + o];
            const float* w = weights + static_cast<std::size_t>(j + o) * stride;
            __m256 a = _mm256_mul_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(w));
            for (int t = 8; t < stride; t += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(v + t), _mm256_loadu_ps(w + t), a);
            acc[o] = a;
        }
        _mm256_storeu_ps(out + j, sum_lanes8(acc));
    }
    if (j < count)  // the last 1-7 outputs
        filter_columns_scalar(row, weights + static_cast<std::size_t>(j) * stride, stride,
                              first + j, count - j, out + j);
#else
    filter_columns_scalar(row, weights, stride, first, count, out);
#endif
}

}  // namespace autoweld::detail
