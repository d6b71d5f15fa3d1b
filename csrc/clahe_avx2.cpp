// AVX2 flavour of the CLAHE row interpolation: one gather of the packed four-LUT word per pixel,
// then exactly OpenCV's float expression (separate multiplies and adds, never fused: the
// pragma below keeps the compiler from contracting them into FMA, which would change the
// rounding of a few pixels). Dispatched only when the CPU runs Isa::avx2.
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

// ---- OpenCV's 8-bit Lab conversions, 8 pixels at a time (integer, bit-exact) -----------------

#if defined(__AVX2__)
namespace {

// The eight int32 lanes of v (0..255 after the caller's clamps; saturated otherwise) as bytes.
void pack8(__m256i v, std::uint8_t* dst) {
    const __m256i p16 = _mm256_packus_epi32(v, v);
    const __m256i p8 = _mm256_packus_epi16(p16, p16);
    const std::uint32_t lo = static_cast<std::uint32_t>(_mm256_cvtsi256_si32(p8));
    const std::uint32_t hi =
        static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(p8, 1)));
    std::memcpy(dst, &lo, 4);
    std::memcpy(dst + 4, &hi, 4);
}

}  // namespace
#endif

void bgr_to_lab_planes_avx2(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                            std::uint8_t* a, std::uint8_t* b) {
#if defined(__AVX2__)
    const LabTables& t = lab_tables_i32();
    const int* gamma = t.gamma.data();
    const int* cbrt = t.cbrt.data();
    const __m256i half12 = _mm256_set1_epi32(1 << 11);
    const __m256i l_scale = _mm256_set1_epi32((116 * 255 + 50) / 100);
    const __m256i l_add = _mm256_set1_epi32(-((16 * 255 * (1 << 15) + 50) / 100) + (1 << 14));
    const __m256i ab_add = _mm256_set1_epi32(128 * (1 << 15) + (1 << 14));
    const __m256i c500 = _mm256_set1_epi32(500), c200 = _mm256_set1_epi32(200);
    auto coef = [](int v) { return _mm256_set1_epi32(v); };
    const __m256i k0 = coef(778), k1 = coef(1541), k2 = coef(1777), k3 = coef(296),
                  k4 = coef(2929), k5 = coef(871), k6 = coef(3575), k7 = coef(448), k8 = coef(73);
    // Deinterleave 8 BGR pixels (24 bytes) with two byte shuffles per channel.
    const __m128i b_lo = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i b_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i g_lo = _mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i g_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, 0, 3, 6, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i r_lo = _mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i r_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, 1, 4, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bgr + 3 * i));
        std::int64_t tail;
        std::memcpy(&tail, bgr + 3 * i + 16, 8);
        const __m128i hi = _mm_cvtsi64_si128(tail);
        const __m256i vb = _mm256_cvtepu8_epi32(
            _mm_or_si128(_mm_shuffle_epi8(lo, b_lo), _mm_shuffle_epi8(hi, b_hi)));
        const __m256i vg = _mm256_cvtepu8_epi32(
            _mm_or_si128(_mm_shuffle_epi8(lo, g_lo), _mm_shuffle_epi8(hi, g_hi)));
        const __m256i vr = _mm256_cvtepu8_epi32(
            _mm_or_si128(_mm_shuffle_epi8(lo, r_lo), _mm_shuffle_epi8(hi, r_hi)));
        const __m256i gb = _mm256_i32gather_epi32(gamma, vb, 4);
        const __m256i gg = _mm256_i32gather_epi32(gamma, vg, 4);
        const __m256i gr = _mm256_i32gather_epi32(gamma, vr, 4);
        auto dot = [&](__m256i c0, __m256i c1, __m256i c2) {
            __m256i s = _mm256_add_epi32(_mm256_mullo_epi32(gb, c0), _mm256_mullo_epi32(gg, c1));
            s = _mm256_add_epi32(s, _mm256_mullo_epi32(gr, c2));
            return _mm256_srai_epi32(_mm256_add_epi32(s, half12), 12);
        };
        const __m256i fx = _mm256_i32gather_epi32(cbrt, dot(k0, k1, k2), 4);
        const __m256i fy = _mm256_i32gather_epi32(cbrt, dot(k3, k4, k5), 4);
        const __m256i fz = _mm256_i32gather_epi32(cbrt, dot(k6, k7, k8), 4);
        const __m256i vl =
            _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(fy, l_scale), l_add), 15);
        const __m256i va = _mm256_srai_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(_mm256_sub_epi32(fx, fy), c500), ab_add), 15);
        const __m256i vbb = _mm256_srai_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(_mm256_sub_epi32(fy, fz), c200), ab_add), 15);
        pack8(vl, l + i);
        pack8(va, a + i);
        pack8(vbb, b + i);
    }
    if (i < n) bgr_to_lab_planes_scalar(bgr + 3 * i, n - i, l + i, a + i, b + i);
#else
    bgr_to_lab_planes_scalar(bgr, n, l, a, b);
#endif
}

void lab_planes_to_bgr_avx2(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                            std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                            std::uint8_t* out_r) {
#if defined(__AVX2__)
    const LabTables& t = lab_tables_i32();
    constexpr int kBase = 1 << 14, kMinAB = -8145;
    const __m256i a_mul = _mm256_set1_epi32(5 * 53687), a_add = _mm256_set1_epi32(1 << 7);
    const __m256i a_sub = _mm256_set1_epi32(128 * kBase / 500 + kMinAB);
    const __m256i b_mul = _mm256_set1_epi32(41943), b_add = _mm256_set1_epi32(1 << 4);
    const __m256i b_sub = _mm256_set1_epi32(128 * kBase / 200 - 1);
    const __m256i min_ab = _mm256_set1_epi32(kMinAB);
    const __m256i low16 = _mm256_set1_epi32(0xFFFF), c108 = _mm256_set1_epi32(108);
    const __m256i c290 = _mm256_set1_epi32(kBase * 16 / 116 * 108 / 841);
    const __m256i c3390 = _mm256_set1_epi32(3390);
    const __m256 c841 = _mm256_set1_ps(841.0f);
    const __m256i half14 = _mm256_set1_epi32(1 << 13);
    const __m256i zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(4095);
    auto coef = [](int v) { return _mm256_set1_epi32(v); };
    const __m256i c0 = coef(12615), c1 = coef(-6296), c2 = coef(-2223), c3 = coef(-3773),
                  c4 = coef(7684), c5 = coef(185), c6 = coef(217), c7 = coef(-836), c8 = coef(4715);
    auto load8 = [](const std::uint8_t* p) {
        std::int64_t v;
        std::memcpy(&v, p, 8);
        return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
    };
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i vl = load8(l + i), va = load8(a + i), vb = load8(b + i);
        const __m256i yf = _mm256_i32gather_epi32(t.y_ify.data(), vl, 4);
        const __m256i y = _mm256_and_si256(yf, low16);
        const __m256i ify = _mm256_srli_epi32(yf, 16);
        // adiv - minAB and bdiv folded into the table offsets.
        const __m256i adiv = _mm256_sub_epi32(
            _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(va, a_mul), a_add), 13), a_sub);
        const __m256i bdiv = _mm256_sub_epi32(
            _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(vb, b_mul), b_add), 9), b_sub);
        // ab_to_xz computed instead of looked up: cube above 3390, linear (C division) below.
        auto xz = [&](__m256i v) {
            const __m256i sq = _mm256_srli_epi32(_mm256_mullo_epi32(v, v), 14);
            const __m256i cube = _mm256_srli_epi32(_mm256_mullo_epi32(sq, v), 14);
            const __m256 scaled = _mm256_cvtepi32_ps(_mm256_mullo_epi32(v, c108));
            const __m256i linear =
                _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_div_ps(scaled, c841)), c290);
            return _mm256_blendv_epi8(linear, cube, _mm256_cmpgt_epi32(v, c3390));
        };
        const __m256i x = xz(_mm256_add_epi32(_mm256_add_epi32(ify, adiv), min_ab));
        const __m256i z = xz(_mm256_sub_epi32(ify, bdiv));
        auto channel = [&](__m256i k0, __m256i k1, __m256i k2) {
            __m256i s = _mm256_add_epi32(_mm256_mullo_epi32(x, k0), _mm256_mullo_epi32(y, k1));
            s = _mm256_add_epi32(s, _mm256_mullo_epi32(z, k2));
            s = _mm256_srai_epi32(_mm256_add_epi32(s, half14), 14);
            s = _mm256_min_epi32(_mm256_max_epi32(s, zero), top);
            return _mm256_i32gather_epi32(t.inv_gamma.data(), s, 4);
        };
        pack8(channel(c0, c1, c2), out_r + i);
        pack8(channel(c3, c4, c5), out_g + i);
        pack8(channel(c6, c7, c8), out_b + i);
    }
    if (i < n)
        lab_planes_to_bgr_scalar(l + i, a + i, b + i, n - i, out_b + i, out_g + i, out_r + i);
#else
    lab_planes_to_bgr_scalar(l, a, b, n, out_b, out_g, out_r);
#endif
}

}  // namespace autoweld::detail
