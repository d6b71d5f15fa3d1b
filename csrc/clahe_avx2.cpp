// AVX2 flavour of the CLAHE row interpolation: one gather of the packed four-LUT word per pixel,
// then exactly OpenCV's float expression (separate multiplies and adds, never fused: the
// pragma below keeps the compiler from contracting them into FMA, which would change the
// rounding of a few pixels). Only called when cpu_has_avx2_fma().
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#include <cmath>
#include <cstring>

#include "clahe.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace autoweld::detail {

void clahe_row_avx2(const ClaheTables& t, const std::uint32_t* packed, float ya, float ya1,
                    const std::uint8_t* src, std::uint8_t* dst) {
#if defined(__AVX2__)
    const std::int32_t* seg = t.column_segment.data();
    const float* xa = t.column_weight.data();
    const float* xa1 = t.column_weight_complement.data();
    const __m256 vya = _mm256_set1_ps(ya), vya1 = _mm256_set1_ps(ya1);
    const __m256i byte = _mm256_set1_epi32(0xFF);
    int x = 0;
    for (; x + 8 <= t.width; x += 8) {
        const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(seg + x));
        std::int64_t eight;
        std::memcpy(&eight, src + x, 8);
        const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(eight));
        const __m256i idx = _mm256_add_epi32(_mm256_slli_epi32(s, 8), v);
        const __m256i w = _mm256_i32gather_epi32(reinterpret_cast<const int*>(packed), idx, 4);
        const __m256 l11 = _mm256_cvtepi32_ps(_mm256_and_si256(w, byte));
        const __m256 l12 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 8), byte));
        const __m256 l21 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 16), byte));
        const __m256 l22 = _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 24));
        const __m256 wx1 = _mm256_loadu_ps(xa1 + x), wx = _mm256_loadu_ps(xa + x);
        const __m256 top = _mm256_add_ps(_mm256_mul_ps(l11, wx1), _mm256_mul_ps(l12, wx));
        const __m256 bottom = _mm256_add_ps(_mm256_mul_ps(l21, wx1), _mm256_mul_ps(l22, wx));
        const __m256 res = _mm256_add_ps(_mm256_mul_ps(top, vya1), _mm256_mul_ps(bottom, vya));
        const __m256i r = _mm256_cvtps_epi32(res);  // round half to even, like cvRound
        const __m256i p16 = _mm256_packus_epi32(r, r);
        const __m256i p8 = _mm256_packus_epi16(p16, p16);
        const std::uint32_t lo = static_cast<std::uint32_t>(_mm256_cvtsi256_si32(p8));
        const std::uint32_t hi =
            static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(p8, 1)));
        std::memcpy(dst + x, &lo, 4);
        std::memcpy(dst + x + 4, &hi, 4);
    }
    if (x < t.width) {
        for (; x < t.width; ++x) {
            const std::uint32_t word = packed[seg[x] * 256 + src[x]];
            const float l11 = static_cast<float>(word & 0xFF);
            const float l12 = static_cast<float>((word >> 8) & 0xFF);
            const float l21 = static_cast<float>((word >> 16) & 0xFF);
            const float l22 = static_cast<float>(word >> 24);
            const float top = l11 * xa1[x] + l12 * xa[x];
            const float bottom = l21 * xa1[x] + l22 * xa[x];
            const long r = std::lrint(top * ya1 + bottom * ya);
            dst[x] = static_cast<std::uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
        }
    }
#else
    clahe_row_scalar(t, packed, ya, ya1, src, dst);
#endif
}

}  // namespace autoweld::detail
