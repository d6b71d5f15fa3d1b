// AVX2 variant of the anomaly map's blur (anomaly_map_kernels.hpp). Compiled with -mavx2 -mfma
// and -ffp-contract=off (CMakeLists.txt): a multiply and an add are never fused into one FMA, so
// the sums round as the portable kernel's do and the maps are the same to the bit.
#include <immintrin.h>

#include "anomaly_map_kernels.hpp"

namespace autoweld {

void weighted_rows_avx2(const float* kernel, std::size_t taps, const float* const* rows,
                        int width, float* dst) {
    int x = 0;
    for (; x + 32 <= width; x += 32) {  // 32 outputs in four registers
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (std::size_t t = 0; t < taps; ++t) {
            const __m256 k = _mm256_set1_ps(kernel[t]);
            const float* p = rows[t] + x;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(k, _mm256_loadu_ps(p)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(k, _mm256_loadu_ps(p + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(k, _mm256_loadu_ps(p + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(k, _mm256_loadu_ps(p + 24)));
        }
        _mm256_storeu_ps(dst + x, a0);
        _mm256_storeu_ps(dst + x + 8, a1);
        _mm256_storeu_ps(dst + x + 16, a2);
        _mm256_storeu_ps(dst + x + 24, a3);
    }
    for (; x + 8 <= width; x += 8) {
        __m256 a = _mm256_setzero_ps();
        for (std::size_t t = 0; t < taps; ++t)
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(kernel[t]), _mm256_loadu_ps(rows[t] + x)));
        _mm256_storeu_ps(dst + x, a);
    }
    for (; x < width; ++x) {
        float acc = 0.f;
        for (std::size_t t = 0; t < taps; ++t) acc += kernel[t] * rows[t][x];
        dst[x] = acc;
    }
}

}  // namespace autoweld
