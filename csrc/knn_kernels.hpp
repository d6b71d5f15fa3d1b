// The kNN kernels each instruction set implements (knn.cpp: portable; knn_avx2.cpp,
// knn_avx512.cpp) and the layouts they share. Internal to the core. Declarations and constants
// only, so that the ISA files may include it (see CMakeLists.txt on inline code in them).
#pragma once

#include <cstddef>
#include <cstdint>

namespace autoweld::detail {

// Size of one query panel of the blocked kernel (the AVX2 micro-kernel computes 16 queries x
// 6 bank rows at a time).
constexpr std::size_t kPanel = 16;
constexpr std::size_t kBankTile = 6;

// out[(j - j0) * 16 + lane] (+)= sum over the kc columns of qpack[kc][16] x bpack rows, for the
// `rows` packed bank rows (out holds whole tiles: ceil(rows / 6) * 6 * 16 floats).
// When norms (the rows' squared norms, padded to whole tiles) is given, hits[tile] gets a bit
// per row for which some lane has norms[j] - 2 * dot <= thr[lane] (16 thresholds); the portable
// kernel sets every bit (the caller checks each candidate exactly anyway).
void panel_dots_avx2(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                     float* out, bool accumulate, const float* norms, const float* thr,
                     std::uint8_t* hits);
void panel_dots_avx512(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                       float* out, bool accumulate, const float* norms, const float* thr,
                       std::uint8_t* hits);
void panel_dots_portable(const float* qpack, const float* bpack, std::size_t kc,
                         std::size_t rows, float* out, bool accumulate, const float* norms,
                         const float* thr, std::uint8_t* hits);

// out[r * 16 + l] = sum over d < n of rows[r][d] * qt[d * 16 + l]: the dot products of `count`
// bank rows with the 16 queries of a panel stored column by column (qt[d][16]). Rows are taken
// four at a time so that four independent sums keep the FMA pipes busy. Every path sums each
// value as the panel kernel does (one FMA chain over d in order), so the pruned search's full
// distances are the brute force's to the bit.
void panel_rows_dots_portable(const float* qt, const float* const* rows, std::size_t count,
                              std::size_t n, float* out);
// The SIMD versions: their kernel for exactly four rows, driven by rows_in_fours - groups of
// four, then the 1-3 rows left as one more group with the last row repeated. Every row is then
// summed by the same code wherever it falls in the batch (equal rows, equal values: ties go to
// the lower index, as the brute force breaks them), and no row's FMA chain runs alone, waiting
// on latency. rows_in_fours lives in the portable translation unit (no ISA flags leak into it).
using FourRows = void (*)(const float* qt, const float* const* rows, std::size_t n, float* out);
void rows_in_fours(FourRows four_rows, const float* qt, const float* const* rows,
                   std::size_t count, std::size_t n, float* out);
void panel_rows_dots_avx2(const float* qt, const float* const* rows, std::size_t count,
                          std::size_t n, float* out);
void panel_rows_dots_avx512(const float* qt, const float* const* rows, std::size_t count,
                            std::size_t n, float* out);

// For `rows` rows of dot products laid out as the panel kernel writes them (dots[j * 16 + lane]),
// the rows j where some lane l has norms[j] - 2 * dots[j][l] <= thr[l] (the same test, rounded
// the same way, as the kernel's own filter): their numbers in hit_rows and those lanes as bits
// in hit_lanes (both arrays hold `rows` entries); returns how many.
std::size_t bound_rows_portable(const float* dots, const float* norms, std::size_t rows,
                                const float* thr, std::uint32_t* hit_rows,
                                std::uint16_t* hit_lanes);
std::size_t bound_rows_avx2(const float* dots, const float* norms, std::size_t rows,
                            const float* thr, std::uint32_t* hit_rows, std::uint16_t* hit_lanes);
std::size_t bound_rows_avx512(const float* dots, const float* norms, std::size_t rows,
                              const float* thr, std::uint32_t* hit_rows,
                              std::uint16_t* hit_lanes);

// out[t * 16 + l] = sum over d < m of g * g, g = max(lo[d] - x, x - hi[d], 0) with x = the
// lane's coordinate ppack[d * 16 + l]: the squared distance of each of the 16 projected queries
// of a panel to each of `count` axis-aligned boxes (box t is m lower corners, then m upper
// ones: boxes[t * 2m ...]), and nearest[t] = the smallest of out[t * 16 ...] (all 16 lanes).
// The pruned search skips the bank tiles whose box is out of reach; its margins take the
// rounding of these sums into account, so the flavours may differ in it.
void box_bounds_portable(const float* ppack, const float* boxes, std::size_t count,
                         std::size_t m, float* out, float* nearest);
void box_bounds_avx2(const float* ppack, const float* boxes, std::size_t count, std::size_t m,
                     float* out, float* nearest);
void box_bounds_avx512(const float* ppack, const float* boxes, std::size_t count, std::size_t m,
                       float* out, float* nearest);

// The brute-force index's bf16 first pass (knn_bf16_avx512.cpp; call only when
// cpu_has_avx512_bf16() and bf16_kernels_built()). Queries and bank rows as pairs of bf16, one
// 32-bit word per pair (coordinate 2p in the low half, 2p + 1 in the high half, zero past the
// end): qpack[pair][16], bpack[tile][pair][6] (tiles of 6 rows, the last zero-padded).
// panel_scan_bf16 takes `rows` bank rows from the first of bpack: with a = a lane's approximate
// dot product with row j, minima[l] follows the smallest upper[j] - 2 a so far, and the rows j
// where some lane has lower[j] - 2 a <= minima[l] + slack[l] (its minimum after row j) go to
// hit_rows (their numbers) and hit_lanes (those lanes as bits); returns how many.
bool bf16_kernels_built();
std::size_t panel_scan_bf16(const std::uint32_t* qpack, const std::uint32_t* bpack,
                            std::size_t pairs, std::size_t rows, const float* upper,
                            const float* lower, const float* slack, float* minima,
                            std::uint32_t* hit_rows, std::uint16_t* hit_lanes);

}  // namespace autoweld::detail
