// AVX-512 kernel of the preprocessing's vertical filter: weighted sum of uint8 rows into floats,
// 64 columns per step. Dispatched only when the CPU runs Isa::avx512.
#include "preprocess_kernels.hpp"

// GCC 12 warns about the deliberately undefined pass-through operand inside its own AVX-512
// intrinsic headers (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace autoweld::detail {

void weighted_rows_avx512(const std::uint8_t* const* rows, const float* weights, int count,
                          std::size_t n, float* out) {
#if defined(__AVX512F__)
    std::size_t k = 0;
    for (; k + 64 <= n; k += 64) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < count; ++t) {
            const __m512 w = _mm512_set1_ps(weights[t]);
            const std::uint8_t* r = rows[t] + k;
            auto widen = [r](int q) {
                return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16 * q))));
            };
            a0 = _mm512_fmadd_ps(w, widen(0), a0);
            a1 = _mm512_fmadd_ps(w, widen(1), a1);
            a2 = _mm512_fmadd_ps(w, widen(2), a2);
            a3 = _mm512_fmadd_ps(w, widen(3), a3);
        }
        _mm512_storeu_ps(out + k, a0);
        _mm512_storeu_ps(out + k + 16, a1);
        _mm512_storeu_ps(out + k + 32, a2);
        _mm512_storeu_ps(out + k + 48, a3);
    }
    for (; k < n; ++k) {  // tail columns
        float sum = 0.f;
        for (int t = 0; t < count; ++t) sum += weights[t] * static_cast<float>(rows[t][k]);
        out[k] = sum;
    }
#else
    weighted_rows_avx2(rows, weights, count, n, out);
#endif
}

}  // namespace autoweld::detail
