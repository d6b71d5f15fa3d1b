// AVX-512 (with VBMI) flavour of the CLAHE row interpolation. Instead of one gather per 8
// pixels, the four 256-entry LUTs of a segment (the columns between two tile centres) are held
// in 16 zmm registers and looked up 64 pixels at a time with byte permutes (vpermi2b), then the
// exact OpenCV float expression follows (separate multiplies and adds, never fused; see the
// pragma). Same bytes as clahe_row_scalar. Only called when cpu_has_avx512_vbmi().
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

// GCC 12 warns about the deliberately undefined pass-through operand inside its own AVX-512
// intrinsic headers (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "clahe.hpp"

#define AUTOWELD_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))

namespace autoweld::detail {

namespace {

struct Lut256 {
    __m512i q0, q1, q2, q3;  // entries 0-63, 64-127, 128-191, 192-255
};

AUTOWELD_VBMI inline Lut256 load_lut(const std::uint8_t* lut) {
    return {_mm512_loadu_si512(lut), _mm512_loadu_si512(lut + 64), _mm512_loadu_si512(lut + 128),
            _mm512_loadu_si512(lut + 192)};
}

// lut[v] for 64 bytes v: two 128-entry permutes, picked by the top bit of v.
AUTOWELD_VBMI inline __m512i lookup(const Lut256& lut, __m512i v) {
    const __m512i lo = _mm512_permutex2var_epi8(lut.q0, v, lut.q1);
    const __m512i hi = _mm512_permutex2var_epi8(lut.q2, v, lut.q3);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi);
}

AUTOWELD_VBMI inline __m512 quarter_to_float(__m512i bytes, int q) {
    __m128i part;
    switch (q) {
        case 0: part = _mm512_extracti32x4_epi32(bytes, 0); break;
        case 1: part = _mm512_extracti32x4_epi32(bytes, 1); break;
        case 2: part = _mm512_extracti32x4_epi32(bytes, 2); break;
        default: part = _mm512_extracti32x4_epi32(bytes, 3); break;
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part));
}

}  // namespace

AUTOWELD_VBMI void clahe_row_avx512(const ClaheTables& t, int band, float ya, float ya1,
                                    const std::uint8_t* src, std::uint8_t* dst) {
    const int ty1 = std::max(band - 1, 0), ty2 = std::min(band, t.tiles_y - 1);
    const std::uint8_t* plane1 = t.lut.data() + static_cast<std::size_t>(ty1) * t.tiles_x * 256;
    const std::uint8_t* plane2 = t.lut.data() + static_cast<std::size_t>(ty2) * t.tiles_x * 256;
    const float* xa = t.column_weight.data();
    const float* xa1 = t.column_weight_complement.data();
    const __m512 vya = _mm512_set1_ps(ya), vya1 = _mm512_set1_ps(ya1);
    const __m512i zero = _mm512_setzero_si512();
    for (int s = 0; s <= t.tiles_x; ++s) {
        const int x_begin = t.segment_begin[s], x_end = t.segment_begin[s + 1];
        if (x_begin >= x_end) continue;
        const int tx1 = std::max(s - 1, 0), tx2 = std::min(s, t.tiles_x - 1);
        const Lut256 l11 = load_lut(plane1 + tx1 * 256), l12 = load_lut(plane1 + tx2 * 256);
        const Lut256 l21 = load_lut(plane2 + tx1 * 256), l22 = load_lut(plane2 + tx2 * 256);
        for (int x = x_begin; x < x_end; x += 64) {
            const int n = std::min(64, x_end - x);
            const __mmask64 m = n == 64 ? ~__mmask64{0} : ((__mmask64{1} << n) - 1);
            const __m512i v = _mm512_maskz_loadu_epi8(m, src + x);
            const __m512i b11 = lookup(l11, v), b12 = lookup(l12, v);
            const __m512i b21 = lookup(l21, v), b22 = lookup(l22, v);
            __m512i packed = zero;
            for (int q = 0; q < 4; ++q) {
                const __mmask16 mq = static_cast<__mmask16>(m >> (16 * q));
                if (mq == 0) break;
                const __m512 wx = _mm512_maskz_loadu_ps(mq, xa + x + 16 * q);
                const __m512 wx1 = _mm512_maskz_loadu_ps(mq, xa1 + x + 16 * q);
                // (lut11*xa1 + lut12*xa)*ya1 + (lut21*xa1 + lut22*xa)*ya, as OpenCV evaluates it.
                const __m512 top = _mm512_add_ps(_mm512_mul_ps(quarter_to_float(b11, q), wx1),
                                                 _mm512_mul_ps(quarter_to_float(b12, q), wx));
                const __m512 bottom = _mm512_add_ps(_mm512_mul_ps(quarter_to_float(b21, q), wx1),
                                                    _mm512_mul_ps(quarter_to_float(b22, q), wx));
                const __m512 res = _mm512_add_ps(_mm512_mul_ps(top, vya1), _mm512_mul_ps(bottom, vya));
                // Round half to even (cvRound), clamp at 0, saturate at 255.
                const __m512i r = _mm512_max_epi32(_mm512_cvtps_epi32(res), zero);
                const __m128i bytes = _mm512_cvtusepi32_epi8(r);
                switch (q) {
                    case 0: packed = _mm512_inserti32x4(packed, bytes, 0); break;
                    case 1: packed = _mm512_inserti32x4(packed, bytes, 1); break;
                    case 2: packed = _mm512_inserti32x4(packed, bytes, 2); break;
                    default: packed = _mm512_inserti32x4(packed, bytes, 3); break;
                }
            }
            _mm512_mask_storeu_epi8(dst + x, m, packed);
        }
    }
}

}  // namespace autoweld::detail
