// AVX-512 BF16 kernels of the brute-force kNN index's first pass (knn_kernels.hpp). Compiled
// with the AVX-512 flags plus -mavx512bf16; called only when cpu_has_avx512_bf16().
//
// One zmm holds the 16 queries of a panel as pairs of bf16 (coordinates 2p and 2p + 1 of each
// query in one 32-bit lane); VDPBF16PS adds both products of a pair per lane in one instruction,
// twice the multiply-adds of an FP32 FMA. The micro-kernel keeps 24 bank rows (4 tiles of 6) in
// 24 accumulators, the bank's pairs broadcast from memory.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "knn_kernels.hpp"

namespace autoweld::detail {

#if defined(__AVX512BF16__)
namespace {

// 16 queries x (Tiles x 6) rows; then, row by row, the running minimum of upper[j] - 2 a and
// the rows whose lower[j] - 2 a is at most that minimum plus slack for some lane.
template <int Tiles>
inline std::size_t micro_bf16(const std::uint32_t* qpack, const std::uint32_t* bpack,
                              std::size_t pairs, std::size_t row0, std::size_t rows,
                              const float* upper, const float* lower, __m512 slack,
                              __m512& minima, std::uint32_t* hit_rows, std::uint16_t* hit_lanes) {
    constexpr int kRows = Tiles * static_cast<int>(kBankTile);
    __m512 c[kRows];
    for (int r = 0; r < kRows; ++r) c[r] = _mm512_setzero_ps();
    const std::uint32_t* b[Tiles];
    for (int t = 0; t < Tiles; ++t) b[t] = bpack + t * pairs * kBankTile;
    for (std::size_t p = 0; p < pairs; ++p) {
        const __m512bh qv = (__m512bh)_mm512_loadu_si512(qpack + p * kPanel);
        for (int t = 0; t < Tiles; ++t) {
            const std::uint32_t* bt = b[t] + p * kBankTile;
            for (int r = 0; r < static_cast<int>(kBankTile); ++r) {
                const auto pair = static_cast<int>(bt[r]);
                c[t * kBankTile + r] =
                    _mm512_dpbf16_ps(c[t * kBankTile + r], qv, (__m512bh)_mm512_set1_epi32(pair));
            }
        }
    }
    std::size_t count = 0;
    for (int r = 0; r < kRows; ++r) {
        const std::size_t j = row0 + static_cast<std::size_t>(r);
        if (j >= rows) break;
        const __m512 twice = _mm512_add_ps(c[r], c[r]);
        minima = _mm512_min_ps(minima, _mm512_sub_ps(_mm512_set1_ps(upper[j]), twice));
        const __m512 v = _mm512_sub_ps(_mm512_set1_ps(lower[j]), twice);
        const unsigned mask = _mm512_cmp_ps_mask(v, _mm512_add_ps(minima, slack), _CMP_LE_OQ);
        hit_rows[count] = static_cast<std::uint32_t>(j);  // branch-free: kept if mask != 0
        hit_lanes[count] = static_cast<std::uint16_t>(mask);
        count += mask != 0;
    }
    return count;
}

}  // namespace

bool bf16_kernels_built() { return true; }

std::size_t panel_scan_bf16(const std::uint32_t* qpack, const std::uint32_t* bpack,
                            std::size_t pairs, std::size_t rows, const float* upper,
                            const float* lower, const float* slack, float* minima,
                            std::uint32_t* hit_rows, std::uint16_t* hit_lanes) {
    const std::size_t tiles = (rows + kBankTile - 1) / kBankTile;
    const __m512 s = _mm512_loadu_ps(slack);
    __m512 m = _mm512_loadu_ps(minima);
    std::size_t count = 0, t = 0;
    // `Tiles` tiles (of 6 rows) from tile t on, through the micro-kernel of that width.
    auto step = [&](auto width) {
        constexpr int kTiles = decltype(width)::value;
        count += micro_bf16<kTiles>(qpack, bpack + t * pairs * kBankTile, pairs, t * kBankTile,
                                    rows, upper, lower, s, m, hit_rows + count,
                                    hit_lanes + count);
        t += kTiles;
    };
    while (t + 4 <= tiles) step(std::integral_constant<int, 4>{});
    if (tiles - t == 3) step(std::integral_constant<int, 3>{});
    if (tiles - t == 2) step(std::integral_constant<int, 2>{});
    if (tiles - t == 1) step(std::integral_constant<int, 1>{});
    _mm512_storeu_ps(minima, m);
    return count;
}

#else
// Built by a compiler without AVX-512 BF16: plain stand-ins (never dispatched: the index only
// takes the bf16 path when bf16_kernels_built()).
bool bf16_kernels_built() { return false; }

std::size_t panel_scan_bf16(const std::uint32_t* qpack, const std::uint32_t* bpack,
                            std::size_t pairs, std::size_t rows, const float* upper,
                            const float* lower, const float* slack, float* minima,
                            std::uint32_t* hit_rows, std::uint16_t* hit_lanes) {
    auto widen = [](std::uint32_t half) {
        const std::uint32_t bits = half << 16;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return f;
    };
    std::size_t count = 0;
    for (std::size_t j = 0; j < rows; ++j) {
        unsigned mask = 0;
        for (std::size_t l = 0; l < kPanel; ++l) {
            float acc = 0.0f;
            for (std::size_t p = 0; p < pairs; ++p) {
                const std::uint32_t q = qpack[p * kPanel + l];
                const std::uint32_t b = bpack[((j / kBankTile) * pairs + p) * kBankTile + j % kBankTile];
                acc += widen(q & 0xffffu) * widen(b & 0xffffu) + widen(q >> 16) * widen(b >> 16);
            }
            minima[l] = std::min(minima[l], upper[j] - 2.0f * acc);
            mask |= static_cast<unsigned>(lower[j] - 2.0f * acc <= minima[l] + slack[l]) << l;
        }
        hit_rows[count] = static_cast<std::uint32_t>(j);
        hit_lanes[count] = static_cast<std::uint16_t>(mask);
        count += mask != 0;
    }
    return count;
}

#endif

}  // namespace autoweld::detail
