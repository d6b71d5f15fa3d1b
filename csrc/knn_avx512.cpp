// AVX-512 kernels of the kNN search (knn_kernels.hpp). Compiled with -mavx512f -mavx512dq
// -mavx512bw -mavx512vl -mfma; dispatched (knn_kernels in knn.cpp) only when the CPU runs
// Isa::avx512.
//
// Same packed layouts as the AVX2 kernel (queries qpack[k][16], bank tiles bpack[tile][k][6]),
// but one zmm register holds the 16 queries of a panel, so with 32 registers the micro-kernel
// takes up to 4 bank tiles (24 rows) at once: 24 accumulators, one query vector per k step and
// the bank values as broadcast memory operands. That halves the query loads per FMA compared
// with the 16x6 AVX2 kernel and keeps the FMA pipes fed with fewer instructions.
// GCC 12 warns about the deliberately undefined pass-through operand inside its own AVX-512
// intrinsic headers (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <tuple>

#include "knn_kernels.hpp"

namespace autoweld::detail {

#if defined(__AVX512F__)
namespace {

template <int Tiles>
inline void micro_16xT(const float* qpack, const float* bpack, std::size_t kc, float* out,
                       bool accumulate, const float* norms, const float* thr,
                       std::uint8_t* hits) {
    constexpr int kRows = Tiles * static_cast<int>(kBankTile);
    __m512 c[kRows];
    if (accumulate) {
        for (int r = 0; r < kRows; ++r) c[r] = _mm512_loadu_ps(out + r * kPanel);
    } else {
        for (int r = 0; r < kRows; ++r) c[r] = _mm512_setzero_ps();
    }
    const float* b[Tiles];
    for (int t = 0; t < Tiles; ++t) b[t] = bpack + t * kc * kBankTile;
    const float* q = qpack;
    for (std::size_t k = 0; k < kc; ++k, q += kPanel) {
        const __m512 qv = _mm512_loadu_ps(q);  // panels are 32-byte aligned
        for (int t = 0; t < Tiles; ++t) {
            const float* bt = b[t] + k * kBankTile;
            for (int r = 0; r < static_cast<int>(kBankTile); ++r)
                c[t * kBankTile + r] = _mm512_fmadd_ps(qv, _mm512_set1_ps(bt[r]),
                                                       c[t * kBankTile + r]);
        }
    }
    for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(out + r * kPanel, c[r]);
    if (norms == nullptr) return;
    // n - (a + a) rounds exactly like the exact check's b - 2 * d (doubling is exact), so the
    // filter never drops a row that check would take.
    const __m512 tv = _mm512_loadu_ps(thr);
    for (int t = 0; t < Tiles; ++t) {
        int mask = 0;
        for (int r = 0; r < static_cast<int>(kBankTile); ++r) {
            const int row = t * static_cast<int>(kBankTile) + r;
            const __m512 v = _mm512_sub_ps(_mm512_set1_ps(norms[row]), _mm512_add_ps(c[row], c[row]));
            mask |= (_mm512_cmp_ps_mask(v, tv, _CMP_LE_OQ) != 0) << r;
        }
        if (hits) hits[t] = static_cast<std::uint8_t>(mask);
    }
}

}  // namespace

void panel_dots_avx512(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                       float* out, bool accumulate, const float* norms, const float* thr,
                       std::uint8_t* hits) {
    const std::size_t tiles = (rows + kBankTile - 1) / kBankTile;
    std::size_t t = 0;
    auto at = [&](std::size_t tile) {
        return std::make_tuple(bpack + tile * kc * kBankTile, out + tile * kBankTile * kPanel,
                               norms ? norms + tile * kBankTile : nullptr,
                               hits ? hits + tile : nullptr);
    };
    for (; t + 4 <= tiles; t += 4) {
        auto [b, o, n, h] = at(t);
        micro_16xT<4>(qpack, b, kc, o, accumulate, n, thr, h);
    }
    const std::size_t rest = tiles - t;
    if (rest == 0) return;
    auto [b, o, n, h] = at(t);
    if (rest == 3)
        micro_16xT<3>(qpack, b, kc, o, accumulate, n, thr, h);
    else if (rest == 2)
        micro_16xT<2>(qpack, b, kc, o, accumulate, n, thr, h);
    else
        micro_16xT<1>(qpack, b, kc, o, accumulate, n, thr, h);
}

namespace {

// R rows: R independent sums, each one FMA chain over d in order (the same chain, so the same
// bits, as four_rows_avx512 gives that row). Eight chains cover the FMA latency of two pipes;
// four left each pipe idle half the time. `next` (nullptr: none) are the R rows of the next
// group: one cache line of each is prefetched per 16 steps, so the bank rows, scattered over
// 7-8 MB, arrive while this group is summed instead of stalling it.
template <int R>
inline void rows_avx512(const float* qt, const float* const* b, std::size_t n, float* o,
                        const float* const* next) {
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();
    for (std::size_t d = 0; d < n; ++d) {
        if (next != nullptr && d % 16 == 0) {
            for (int r = 0; r < R; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(next[r] + d), _MM_HINT_T0);
        }
        const __m512 q = _mm512_loadu_ps(qt + d * kPanel);
        for (int r = 0; r < R; ++r) a[r] = _mm512_fmadd_ps(q, _mm512_set1_ps(b[r][d]), a[r]);
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(o + r * kPanel, a[r]);
}

void four_rows_avx512(const float* qt, const float* const* b, std::size_t n, float* o) {
    rows_avx512<4>(qt, b, n, o, nullptr);
}

}  // namespace

void panel_rows_dots_avx512(const float* qt, const float* const* rows, std::size_t count,
                            std::size_t n, float* out) {
    std::size_t r = 0;
    for (; r + 8 <= count; r += 8) {
        const float* const* next = r + 16 <= count ? rows + r + 8 : nullptr;
        rows_avx512<8>(qt, rows + r, n, out + r * kPanel, next);
    }
    rows_in_fours(four_rows_avx512, qt, rows + r, count - r, n, out + r * kPanel);
}

std::size_t bound_rows_avx512(const float* dots, const float* norms, std::size_t rows,
                              const float* thr, std::uint32_t* hit_rows,
                              std::uint16_t* hit_lanes) {
    const __m512 tv = _mm512_loadu_ps(thr);
    std::size_t count = 0;
    for (std::size_t j = 0; j < rows; ++j) {
        const __m512 d = _mm512_loadu_ps(dots + j * kPanel);
        const __m512 v = _mm512_sub_ps(_mm512_set1_ps(norms[j]), _mm512_add_ps(d, d));
        const unsigned mask = _mm512_cmp_ps_mask(v, tv, _CMP_LE_OQ);
        hit_rows[count] = static_cast<std::uint32_t>(j);  // branch-free: kept if mask != 0
        hit_lanes[count] = static_cast<std::uint16_t>(mask);
        count += mask != 0;
    }
    return count;
}

void box_bounds_avx512(const float* ppack, const float* boxes, std::size_t count, std::size_t m,
                       float* out, float* nearest) {
    const __m512 zero = _mm512_setzero_ps();
    for (std::size_t t = 0; t < count; ++t) {
        const float* lo = boxes + t * 2 * m;
        const float* hi = lo + m;
        // Coordinate d's squared gap to the box, added to acc.
        auto add_gap = [&](std::size_t d, __m512 acc) {
            const __m512 x = _mm512_loadu_ps(ppack + d * kPanel);
            const __m512 g = _mm512_max_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_set1_ps(lo[d]), x),
                                                         _mm512_sub_ps(x, _mm512_set1_ps(hi[d]))),
                                           zero);
            return _mm512_fmadd_ps(g, g, acc);
        };
        __m512 a0 = zero, a1 = zero;  // two chains: even and odd coordinates
        std::size_t d = 0;
        for (; d + 2 <= m; d += 2) {
            a0 = add_gap(d, a0);
            a1 = add_gap(d + 1, a1);
        }
        if (d < m) a0 = add_gap(d, a0);
        const __m512 sum = _mm512_add_ps(a0, a1);
        _mm512_storeu_ps(out + t * kPanel, sum);
        nearest[t] = _mm512_reduce_min_ps(sum);
    }
}

#else
// Built by a compiler without AVX-512 support: the avx512 flavour is the portable kernels (so
// the symbols exist and an AVX-512 CPU still gets correct results).
void panel_dots_avx512(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                       float* out, bool accumulate, const float* norms, const float* thr,
                       std::uint8_t* hits) {
    panel_dots_portable(qpack, bpack, kc, rows, out, accumulate, norms, thr, hits);
}
void panel_rows_dots_avx512(const float* qt, const float* const* rows, std::size_t count,
                            std::size_t n, float* out) {
    panel_rows_dots_portable(qt, rows, count, n, out);
}
std::size_t bound_rows_avx512(const float* dots, const float* norms, std::size_t rows,
                              const float* thr, std::uint32_t* hit_rows,
                              std::uint16_t* hit_lanes) {
    return bound_rows_portable(dots, norms, rows, thr, hit_rows, hit_lanes);
}
void box_bounds_avx512(const float* ppack, const float* boxes, std::size_t count, std::size_t m,
                       float* out, float* nearest) {
    box_bounds_portable(ppack, boxes, count, m, out, nearest);
}
#endif

}  // namespace autoweld::detail
