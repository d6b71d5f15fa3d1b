// AVX-512 (with VBMI) flavour of the CLAHE row interpolation. Instead of one gather per 8
// pixels, the four 256-entry LUTs of a segment (the columns between two tile centres) are held
// in 16 zmm registers and looked up 64 pixels at a time with byte permutes (vpermi2b), then the
// exact OpenCV float expression follows (separate multiplies and adds, never fused; see the
// pragma). Same bytes as clahe_row_scalar. Dispatched only when the CPU runs Isa::avx512
// and has VBMI.
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
#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#define AUTOWELD_HAVE_AVX512_BUILD 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "clahe.hpp"
#include "clahe_lab_tables.hpp"

#define AUTOWELD_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))

namespace autoweld::detail {

#if defined(AUTOWELD_HAVE_AVX512_BUILD)
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

// ---- OpenCV's 8-bit BGR -> Lab (integer, bit-exact), 32 pixels at a time -------------------
// As bgr_to_lab_planes_avx2, but the three lookups of the 256-entry gamma table are done with
// 16-bit permutes (the table lives in 8 zmm registers) instead of gathers; only the cube-root
// lookups (3072 entries) remain gathers, 16 lanes each.

namespace {

struct Gamma256 {
    __m512i t[8];  // 32 16-bit entries each
};

// table[v] for 32 16-bit indices v in [0, 255]: four 64-entry permutes, picked by bits 6, 7.
AUTOWELD_VBMI inline __m512i lookup16(const Gamma256& g, __m512i v) {
    const __m512i r0 = _mm512_permutex2var_epi16(g.t[0], v, g.t[1]);
    const __m512i r1 = _mm512_permutex2var_epi16(g.t[2], v, g.t[3]);
    const __m512i r2 = _mm512_permutex2var_epi16(g.t[4], v, g.t[5]);
    const __m512i r3 = _mm512_permutex2var_epi16(g.t[6], v, g.t[7]);
    const __mmask32 bit6 = _mm512_test_epi16_mask(v, _mm512_set1_epi16(64));
    const __mmask32 bit7 = _mm512_test_epi16_mask(v, _mm512_set1_epi16(128));
    return _mm512_mask_blend_epi16(bit7, _mm512_mask_blend_epi16(bit6, r0, r1),
                                   _mm512_mask_blend_epi16(bit6, r2, r3));
}

// 32 bytes chosen from the 96 bytes of (lo, hi) by `index` (bytes 0-63 from lo, 64-95 from hi).
AUTOWELD_VBMI inline __m512i channel_words(__m512i lo, __m512i hi, __m512i index) {
    return _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutex2var_epi8(lo, index, hi)));
}

// OpenCV's inverse gamma table (4096 entries, values 0..255) is non-decreasing in steps of at
// most 1, so per block of 16 indices it is the value at the block start plus the number of
// steps up to the index: base[s >> 4] + popcount(steps[s >> 4] & ((2 << (s & 15)) - 1)), with
// bit j of steps[] set where entry 16 * block + j exceeds its predecessor (j >= 1). Two
// 256-entry 16-bit lookups (vpermi2w) per 32 lanes instead of 32 scalar loads.
struct InverseGammaBlocks {
    std::uint16_t base[256], steps[256];
    InverseGammaBlocks() {
        for (int blk = 0; blk < 256; ++blk) {
            base[blk] = lab_tables::kInvGamma[16 * blk];
            std::uint16_t bits = 0;
            for (int j = 1; j < 16; ++j)
                if (lab_tables::kInvGamma[16 * blk + j] > lab_tables::kInvGamma[16 * blk + j - 1])
                    bits = static_cast<std::uint16_t>(bits | (1u << j));
            steps[blk] = bits;
        }
    }
};

// Bits set in each 16-bit lane (nibble table with vpshufb, then the two bytes summed).
AUTOWELD_VBMI inline __m512i popcount16(__m512i v) {
    const __m512i nibble_counts = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i per_byte = _mm512_add_epi8(
        _mm512_shuffle_epi8(nibble_counts, _mm512_and_si512(v, low)),
        _mm512_shuffle_epi8(nibble_counts, _mm512_and_si512(_mm512_srli_epi16(v, 4), low)));
    return _mm512_maddubs_epi16(per_byte, _mm512_set1_epi8(1));
}

}  // namespace

AUTOWELD_VBMI void bgr_to_lab_planes_avx512(const std::uint8_t* bgr, std::size_t n,
                                            std::uint8_t* l, std::uint8_t* a, std::uint8_t* b) {
    const int* cbrt = lab_tables_i32().cbrt.data();
    Gamma256 gamma;
    for (int k = 0; k < 8; ++k) gamma.t[k] = _mm512_loadu_si512(lab_tables::kGamma + 32 * k);
    alignas(64) std::uint8_t idx_b[64], idx_g[64], idx_r[64];
    for (int j = 0; j < 64; ++j) {
        const int p = j < 32 ? j : 0;  // the upper 32 bytes are not used
        idx_b[j] = static_cast<std::uint8_t>(3 * p);
        idx_g[j] = static_cast<std::uint8_t>(3 * p + 1);
        idx_r[j] = static_cast<std::uint8_t>(3 * p + 2);
    }
    const __m512i sel_b = _mm512_load_si512(idx_b), sel_g = _mm512_load_si512(idx_g),
                  sel_r = _mm512_load_si512(idx_r);
    const __m512i l_scale = _mm512_set1_epi32((116 * 255 + 50) / 100);
    const __m512i l_add = _mm512_set1_epi32(-((16 * 255 * (1 << 15) + 50) / 100) + (1 << 14));
    const __m512i ab_add = _mm512_set1_epi32(128 * (1 << 15) + (1 << 14));
    const __m512i c500 = _mm512_set1_epi32(500), c200 = _mm512_set1_epi32(200);
    const __m512i zero = _mm512_setzero_si512();
    // 16-bit coefficient pairs for vpmaddwd: (k_b, k_g) and (k_r, 2^11 = the rounding term).
    auto pair = [](int low, int high) { return _mm512_set1_epi32(low | (high << 16)); };
    const __m512i k01 = pair(778, 1541), k2r = pair(1777, 1 << 11);
    const __m512i k34 = pair(296, 2929), k5r = pair(871, 1 << 11);
    const __m512i k67 = pair(3575, 448), k8r = pair(73, 1 << 11);
    const __m512i one_high = _mm512_set1_epi32(1 << 16);
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i lo = _mm512_loadu_si512(bgr + 3 * i);
        const __m512i hi = _mm512_maskz_loadu_epi8(0xFFFFFFFFull, bgr + 3 * i + 64);
        const __m512i gb = lookup16(gamma, channel_words(lo, hi, sel_b));
        const __m512i gg = lookup16(gamma, channel_words(lo, hi, sel_g));
        const __m512i gr = lookup16(gamma, channel_words(lo, hi, sel_r));
        for (int half = 0; half < 2; ++half) {
            auto widen = [half](__m512i w) {
                return _mm512_cvtepu16_epi32(half == 0 ? _mm512_castsi512_si256(w)
                                                       : _mm512_extracti64x4_epi64(w, 1));
            };
            // Per pixel the 16-bit pairs (gamma b, gamma g) and (gamma r, 1): each dot product
            // (plus the rounding constant) is then two vpmaddwd, exact (all factors < 2^15).
            const __m512i vbg = _mm512_or_si512(widen(gb), _mm512_slli_epi32(widen(gg), 16));
            const __m512i vr1 = _mm512_or_si512(widen(gr), one_high);
            auto dot = [&](__m512i c01, __m512i c2r) {
                const __m512i s = _mm512_add_epi32(_mm512_madd_epi16(vbg, c01),
                                                   _mm512_madd_epi16(vr1, c2r));
                return _mm512_srai_epi32(s, 12);
            };
            const __m512i fx = _mm512_i32gather_epi32(dot(k01, k2r), cbrt, 4);
            const __m512i fy = _mm512_i32gather_epi32(dot(k34, k5r), cbrt, 4);
            const __m512i fz = _mm512_i32gather_epi32(dot(k67, k8r), cbrt, 4);
            const __m512i vl =
                _mm512_srai_epi32(_mm512_add_epi32(_mm512_mullo_epi32(fy, l_scale), l_add), 15);
            const __m512i va = _mm512_srai_epi32(
                _mm512_add_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(fx, fy), c500), ab_add), 15);
            const __m512i vbb = _mm512_srai_epi32(
                _mm512_add_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(fy, fz), c200), ab_add), 15);
            // clamp_u8: negative -> 0 here, > 255 -> 255 by the unsigned saturation.
            const std::size_t o = i + 16 * static_cast<std::size_t>(half);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(l + o),
                             _mm512_cvtusepi32_epi8(_mm512_max_epi32(vl, zero)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(a + o),
                             _mm512_cvtusepi32_epi8(_mm512_max_epi32(va, zero)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(b + o),
                             _mm512_cvtusepi32_epi8(_mm512_max_epi32(vbb, zero)));
        }
    }
    if (i < n) bgr_to_lab_planes_scalar(bgr + 3 * i, n - i, l + i, a + i, b + i);
}

// ---- OpenCV's 8-bit Lab -> BGR (integer, bit-exact), 32 pixels at a time -------------------
// As lab_planes_to_bgr_avx2, with the L -> (y, f(y)) lookup as 16-bit permutes; the inverse
// gamma (4096 entries) is looked up with scalar loads (faster than gathers on Zen 4).
AUTOWELD_VBMI void lab_planes_to_bgr_avx512(const std::uint8_t* l, const std::uint8_t* a,
                                            const std::uint8_t* b, std::size_t n,
                                            std::uint8_t* out_b, std::uint8_t* out_g,
                                            std::uint8_t* out_r) {
    static const struct YTables {
        std::uint16_t y[256], ify[256];
        YTables() {
            for (int i = 0; i < 256; ++i) {
                y[i] = lab_tables::kLToYF[2 * i];
                ify[i] = lab_tables::kLToYF[2 * i + 1];
            }
        }
    } ytab;
    Gamma256 y_table, ify_table;
    for (int k = 0; k < 8; ++k) {
        y_table.t[k] = _mm512_loadu_si512(ytab.y + 32 * k);
        ify_table.t[k] = _mm512_loadu_si512(ytab.ify + 32 * k);
    }
    static const InverseGammaBlocks blocks;
    Gamma256 gamma_base, gamma_steps;
    for (int k = 0; k < 8; ++k) {
        gamma_base.t[k] = _mm512_loadu_si512(blocks.base + 32 * k);
        gamma_steps.t[k] = _mm512_loadu_si512(blocks.steps + 32 * k);
    }
    const __m512i fifteen = _mm512_set1_epi16(15), two = _mm512_set1_epi16(2),
                  one16 = _mm512_set1_epi16(1);
    constexpr int kBase = 1 << 14, kMinAB = -8145;
    const __m512i a_mul = _mm512_set1_epi32(5 * 53687), a_add = _mm512_set1_epi32(1 << 7);
    const __m512i a_sub = _mm512_set1_epi32(128 * kBase / 500 + kMinAB);
    const __m512i b_mul = _mm512_set1_epi32(41943), b_add = _mm512_set1_epi32(1 << 4);
    const __m512i b_sub = _mm512_set1_epi32(128 * kBase / 200 - 1);
    const __m512i min_ab = _mm512_set1_epi32(kMinAB), c108 = _mm512_set1_epi32(108);
    const __m512i c290 = _mm512_set1_epi32(kBase * 16 / 116 * 108 / 841);
    const __m512i c3390 = _mm512_set1_epi32(3390);
    const __m512 c841 = _mm512_set1_ps(841.0f);
    const __m512i half14 = _mm512_set1_epi32(1 << 13);
    const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(4095);
    auto coef = [](int v) { return _mm512_set1_epi32(v); };
    auto pair = [](int low, int high) {
        return _mm512_set1_epi32(static_cast<int>((static_cast<unsigned>(low) & 0xFFFFu) |
                                                  (static_cast<unsigned>(high) << 16)));
    };
    const __m512i c01 = pair(12615, -6296), c2 = coef(-2223), c34 = pair(-3773, 7684),
                  c5 = coef(185), c67 = pair(217, -836), c8 = coef(4715);
    const __m512i low16 = _mm512_set1_epi32(0xFFFF);
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i vl16 =
            _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + i)));
        const __m512i y16 = lookup16(y_table, vl16), ify16 = lookup16(ify_table, vl16);
        __m256i linear[3][2];  // clamped linear R, G, B (12 bits) of both halves, as 16 bits
        for (int half = 0; half < 2; ++half) {
            const std::size_t o = i + 16 * static_cast<std::size_t>(half);
            auto widen = [half](__m512i w) {
                return _mm512_cvtepu16_epi32(half == 0 ? _mm512_castsi512_si256(w)
                                                       : _mm512_extracti64x4_epi64(w, 1));
            };
            const __m512i y = widen(y16), ify = widen(ify16);
            const __m512i va =
                _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + o)));
            const __m512i vb =
                _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + o)));
            const __m512i adiv = _mm512_sub_epi32(
                _mm512_srai_epi32(_mm512_add_epi32(_mm512_mullo_epi32(va, a_mul), a_add), 13),
                a_sub);
            const __m512i bdiv = _mm512_sub_epi32(
                _mm512_srai_epi32(_mm512_add_epi32(_mm512_mullo_epi32(vb, b_mul), b_add), 9),
                b_sub);
            // ab_to_xz computed: cube above 3390, linear (C division) below.
            auto xz = [&](__m512i v) {
                const __m512i sq = _mm512_srli_epi32(_mm512_mullo_epi32(v, v), 14);
                const __m512i cube = _mm512_srli_epi32(_mm512_mullo_epi32(sq, v), 14);
                const __m512 scaled = _mm512_cvtepi32_ps(_mm512_mullo_epi32(v, c108));
                const __m512i linear =
                    _mm512_sub_epi32(_mm512_cvttps_epi32(_mm512_div_ps(scaled, c841)), c290);
                return _mm512_mask_blend_epi32(_mm512_cmpgt_epi32_mask(v, c3390), linear, cube);
            };
            const __m512i x = xz(_mm512_add_epi32(_mm512_add_epi32(ify, adiv), min_ab));
            const __m512i z = xz(_mm512_sub_epi32(ify, bdiv));
            // x (in [-538, 32306]) and y (in [0, 16384]) fit a signed 16-bit pair, so
            // k0*x + k1*y is one vpmaddwd; z (up to ~72000) does not.
            const __m512i xy = _mm512_or_si512(_mm512_and_si512(x, low16), _mm512_slli_epi32(y, 16));
            auto channel = [&](__m512i k01, __m512i k2) {
                __m512i s = _mm512_add_epi32(_mm512_madd_epi16(xy, k01), _mm512_mullo_epi32(z, k2));
                s = _mm512_srai_epi32(_mm512_add_epi32(s, half14), 14);
                s = _mm512_min_epi32(_mm512_max_epi32(s, zero), top);
                return _mm512_cvtepi32_epi16(s);
            };
            linear[0][half] = channel(c01, c2);
            linear[1][half] = channel(c34, c5);
            linear[2][half] = channel(c67, c8);
        }
        // The inverse gamma by blocks (InverseGammaBlocks), 32 lanes at once: on the CPU
        // measured (AMD EPYC, Zen 4) gathers and scalar loads both cost more.
        std::uint8_t* const outs[3] = {out_r, out_g, out_b};
        for (int ch = 0; ch < 3; ++ch) {
            const __m512i s16 =
                _mm512_inserti64x4(_mm512_castsi256_si512(linear[ch][0]), linear[ch][1], 1);
            const __m512i block = _mm512_srli_epi16(s16, 4);
            const __m512i upto = _mm512_sub_epi16(
                _mm512_sllv_epi16(two, _mm512_and_si512(s16, fifteen)), one16);
            const __m512i v = _mm512_add_epi16(
                lookup16(gamma_base, block),
                popcount16(_mm512_and_si512(lookup16(gamma_steps, block), upto)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(outs[ch] + i), _mm512_cvtepi16_epi8(v));
        }
    }
    if (i < n)
        lab_planes_to_bgr_scalar(l + i, a + i, b + i, n - i, out_b + i, out_g + i, out_r + i);
}

#else
// Built by a compiler without AVX-512 support: the AVX-512 flavour is the scalar code (so the
// symbols exist and an AVX-512 CPU still gets the same bytes).
void clahe_row_avx512(const ClaheTables& t, int band, float ya, float ya1,
                      const std::uint8_t* src, std::uint8_t* dst) {
    std::vector<std::uint32_t> packed(static_cast<std::size_t>(t.tiles_x + 1) * 256);
    clahe_pack_band(t, band, packed.data());
    clahe_row_scalar(t, packed.data(), ya, ya1, src, dst);
}
void bgr_to_lab_planes_avx512(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                              std::uint8_t* a, std::uint8_t* b) {
    bgr_to_lab_planes_scalar(bgr, n, l, a, b);
}
void lab_planes_to_bgr_avx512(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                              std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                              std::uint8_t* out_r) {
    lab_planes_to_bgr_scalar(l, a, b, n, out_b, out_g, out_r);
}
#endif

}  // namespace autoweld::detail
