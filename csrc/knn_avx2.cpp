// AVX2+FMA kernels of the kNN search (knn_kernels.hpp). Compiled with -mavx2 -mfma; dispatched
// (knn_kernels in knn.cpp) only when the CPU runs Isa::avx2.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "knn_kernels.hpp"

namespace autoweld {
namespace detail {

namespace {

// 16 queries (two 8-lane vectors, packed as qpack[k][16]) x 6 bank rows (packed as
// bpack[k][6], broadcast). 12 accumulators + 2 query vectors + 1 broadcast = 15 of the 16 ymm
// registers.
// With `norms` (the 6 rows' squared norms) it also returns a 6-bit mask of the rows for which
// some lane has |b|^2 - 2 q.b <= thr[lane]: the rows the top-k update must look at.
inline int micro_16x6(const float* qpack, const float* bpack, std::size_t kc, float* out,
                      bool accumulate, const float* norms, const float* thr) {
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
    const float* q = qpack;
    const float* b = bpack;
#define AUTOWELD_STEP(Q, B)                            \
    {                                                  \
        const __m256 q0 = _mm256_load_ps(Q);           \
        const __m256 q1 = _mm256_load_ps((Q) + 8);     \
        __m256 bb = _mm256_broadcast_ss(B);            \
        c00 = _mm256_fmadd_ps(q0, bb, c00);            \
        c01 = _mm256_fmadd_ps(q1, bb, c01);            \
        bb = _mm256_broadcast_ss((B) + 1);             \
        c10 = _mm256_fmadd_ps(q0, bb, c10);            \
        c11 = _mm256_fmadd_ps(q1, bb, c11);            \
        bb = _mm256_broadcast_ss((B) + 2);             \
        c20 = _mm256_fmadd_ps(q0, bb, c20);            \
        c21 = _mm256_fmadd_ps(q1, bb, c21);            \
        bb = _mm256_broadcast_ss((B) + 3);             \
        c30 = _mm256_fmadd_ps(q0, bb, c30);            \
        c31 = _mm256_fmadd_ps(q1, bb, c31);            \
        bb = _mm256_broadcast_ss((B) + 4);             \
        c40 = _mm256_fmadd_ps(q0, bb, c40);            \
        c41 = _mm256_fmadd_ps(q1, bb, c41);            \
        bb = _mm256_broadcast_ss((B) + 5);             \
        c50 = _mm256_fmadd_ps(q0, bb, c50);            \
        c51 = _mm256_fmadd_ps(q1, bb, c51);            \
    }
    std::size_t k = 0;
    for (; k + 4 <= kc; k += 4, q += 64, b += 24) {
        _mm_prefetch(reinterpret_cast<const char*>(b + 96), _MM_HINT_T0);
        AUTOWELD_STEP(q, b)
        AUTOWELD_STEP(q + 16, b + 6)
        AUTOWELD_STEP(q + 32, b + 12)
        AUTOWELD_STEP(q + 48, b + 18)
    }
    for (; k < kc; ++k, q += 16, b += 6) AUTOWELD_STEP(q, b)
#undef AUTOWELD_STEP
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
    if (norms == nullptr) return 0;
    const __m256 t0 = _mm256_loadu_ps(thr), t1 = _mm256_loadu_ps(thr + 8);
    // n - (a + a) rounds exactly like the exact check's b - 2 * d (doubling is exact), so the
    // filter never drops a row that check would take.
    int mask = 0;
#define AUTOWELD_HIT(R, A0, A1)                                                              \
    {                                                                                        \
        const __m256 n = _mm256_broadcast_ss(norms + (R));                                   \
        const __m256 h = _mm256_or_ps(                                                       \
            _mm256_cmp_ps(_mm256_sub_ps(n, _mm256_add_ps(A0, A0)), t0, _CMP_LE_OQ),          \
            _mm256_cmp_ps(_mm256_sub_ps(n, _mm256_add_ps(A1, A1)), t1, _CMP_LE_OQ));         \
        mask |= (_mm256_movemask_ps(h) != 0) << (R);                                         \
    }
    AUTOWELD_HIT(0, c00, c01)
    AUTOWELD_HIT(1, c10, c11)
    AUTOWELD_HIT(2, c20, c21)
    AUTOWELD_HIT(3, c30, c31)
    AUTOWELD_HIT(4, c40, c41)
    AUTOWELD_HIT(5, c50, c51)
#undef AUTOWELD_HIT
    return mask;
}

}  // namespace

void panel_dots_avx2(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                     float* out, bool accumulate, const float* norms, const float* thr,
                     std::uint8_t* hits) {
    const std::size_t tiles = (rows + kBankTile - 1) / kBankTile;
    for (std::size_t t = 0; t < tiles; ++t) {
        const int mask =
            micro_16x6(qpack, bpack + t * kc * kBankTile, kc, out + t * kBankTile * kPanel,
                       accumulate, norms ? norms + t * kBankTile : nullptr, thr);
        if (hits) hits[t] = static_cast<std::uint8_t>(mask);
    }
}

namespace {

// Four rows x two 8-lane halves: eight independent sums, each one FMA chain over d in order.
inline void four_rows_avx2(const float* qt, const float* const* b, std::size_t n, float* o) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, c0 = a0, c1 = a0, e0 = a0, e1 = a0, g0 = a0, g1 = a0;
    for (std::size_t d = 0; d < n; ++d) {
        const __m256 q0 = _mm256_loadu_ps(qt + d * kPanel);
        const __m256 q1 = _mm256_loadu_ps(qt + d * kPanel + 8);
        __m256 v = _mm256_broadcast_ss(b[0] + d);
        a0 = _mm256_fmadd_ps(q0, v, a0);
        a1 = _mm256_fmadd_ps(q1, v, a1);
        v = _mm256_broadcast_ss(b[1] + d);
        c0 = _mm256_fmadd_ps(q0, v, c0);
        c1 = _mm256_fmadd_ps(q1, v, c1);
        v = _mm256_broadcast_ss(b[2] + d);
        e0 = _mm256_fmadd_ps(q0, v, e0);
        e1 = _mm256_fmadd_ps(q1, v, e1);
        v = _mm256_broadcast_ss(b[3] + d);
        g0 = _mm256_fmadd_ps(q0, v, g0);
        g1 = _mm256_fmadd_ps(q1, v, g1);
    }
    _mm256_storeu_ps(o, a0);
    _mm256_storeu_ps(o + 8, a1);
    _mm256_storeu_ps(o + 16, c0);
    _mm256_storeu_ps(o + 24, c1);
    _mm256_storeu_ps(o + 32, e0);
    _mm256_storeu_ps(o + 40, e1);
    _mm256_storeu_ps(o + 48, g0);
    _mm256_storeu_ps(o + 56, g1);
}

}  // namespace

void panel_rows_dots_avx2(const float* qt, const float* const* rows, std::size_t count,
                          std::size_t n, float* out) {
    rows_in_fours(four_rows_avx2, qt, rows, count, n, out);
}

std::size_t bound_rows_avx2(const float* dots, const float* norms, std::size_t rows,
                            const float* thr, std::uint32_t* hit_rows, std::uint16_t* hit_lanes) {
    const __m256 t0 = _mm256_loadu_ps(thr), t1 = _mm256_loadu_ps(thr + 8);
    std::size_t count = 0;
    for (std::size_t j = 0; j < rows; ++j) {
        const __m256 n = _mm256_broadcast_ss(norms + j);
        const __m256 d0 = _mm256_loadu_ps(dots + j * kPanel);
        const __m256 d1 = _mm256_loadu_ps(dots + j * kPanel + 8);
        const int lo = _mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_sub_ps(n, _mm256_add_ps(d0, d0)), t0, _CMP_LE_OQ));
        const int hi = _mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_sub_ps(n, _mm256_add_ps(d1, d1)), t1, _CMP_LE_OQ));
        const int mask = lo | (hi << 8);
        hit_rows[count] = static_cast<std::uint32_t>(j);  // branch-free: kept if mask != 0
        hit_lanes[count] = static_cast<std::uint16_t>(mask);
        count += mask != 0;
    }
    return count;
}

void box_bounds_avx2(const float* ppack, const float* boxes, std::size_t count, std::size_t m,
                     float* out, float* nearest) {
    const __m256 zero = _mm256_setzero_ps();
    for (std::size_t t = 0; t < count; ++t) {
        const float* lo = boxes + t * 2 * m;
        const float* hi = lo + m;
        __m256 a0 = zero, a1 = zero;  // lanes 0-7 and 8-15
        for (std::size_t d = 0; d < m; ++d) {
            const __m256 l = _mm256_broadcast_ss(lo + d), h = _mm256_broadcast_ss(hi + d);
            const __m256 x0 = _mm256_loadu_ps(ppack + d * kPanel);
            const __m256 x1 = _mm256_loadu_ps(ppack + d * kPanel + 8);
            const __m256 g0 =
                _mm256_max_ps(_mm256_max_ps(_mm256_sub_ps(l, x0), _mm256_sub_ps(x0, h)), zero);
            const __m256 g1 =
                _mm256_max_ps(_mm256_max_ps(_mm256_sub_ps(l, x1), _mm256_sub_ps(x1, h)), zero);
            a0 = _mm256_fmadd_ps(g0, g0, a0);
            a1 = _mm256_fmadd_ps(g1, g1, a1);
        }
        _mm256_storeu_ps(out + t * kPanel, a0);
        _mm256_storeu_ps(out + t * kPanel + 8, a1);
        __m256 v = _mm256_min_ps(a0, a1);
        v = _mm256_min_ps(v, _mm256_permute2f128_ps(v, v, 1));
        v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, 0x4e));
        v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, 0xb1));
        nearest[t] = _mm256_cvtss_f32(v);
    }
}

}  // namespace detail
}  // namespace autoweld
