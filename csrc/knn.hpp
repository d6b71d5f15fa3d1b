// Exact k-nearest-neighbour search (Euclidean) of query rows against a memory bank, and the
// blocked A·Bᵀ product it is built on. Python-free; pointer + counts + caller-allocated outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace autoweld {

// Which kernel runs. `automatic` picks AVX-512 when the CPU has it, else AVX2+FMA, else the
// portable one. The explicit choices exist so that tests exercise every path on purpose.
enum class KernelPath { automatic, portable, avx2, avx512 };

// True when `path` can run on this CPU (portable always can).
bool kernel_path_available(KernelPath path);

// out[i] = sum_d x[i*d + d]^2 for n rows of length dim.
void squared_norms(const float* x, std::size_t n, std::size_t dim, float* out, int threads);

// Throws std::invalid_argument naming `name` when any of the n*dim values is NaN or ±Inf.
void require_finite(const float* x, std::size_t count, const char* name);

// c[i*m + j] = <a_i, b_j> for a (n x dim) and b (m x dim), both row-major.
void matmul_abt(const float* a, std::size_t n, const float* b, std::size_t m, std::size_t dim,
                float* c, int threads, KernelPath path = KernelPath::automatic);

// For each of the nq query rows, the k nearest bank rows: Euclidean (not squared) distance,
// ascending; equal distances keep the lower bank index first. distances (nq x k) float and
// indices (nq x k) int64 are written by the function. bank_norms (nb) are the bank rows'
// squared norms, or nullptr to compute them here. Checks: nb >= 1, dim >= 1, 1 <= k <= nb,
// finite values (queries are checked here; the bank is checked when bank_norms is nullptr,
// otherwise the caller - KnnIndex - did it once).
void knn_search(const float* queries, std::size_t nq, const float* bank, const float* bank_norms,
                std::size_t nb, std::size_t dim, std::size_t k, float* distances,
                std::int64_t* indices, int threads, KernelPath path = KernelPath::automatic);

// A memory bank prepared for repeated exact search, in one of two forms. Either way the index
// holds a pointer to the caller's bank (which must outlive it, unchanged) plus what it computed.
//
// Brute force (first constructor): the bank's squared norms; search() is knn_search().
//
// Pruned (second constructor): `basis` (prefix x dim, row-major) has orthonormal rows - in
// practice the bank's leading principal axes. For orthonormal rows U, |U(q - b)| <= |q - b|:
// the distance between the projections is a lower bound of the full one. search() computes
// that bound for every bank row with the blocked kernel (prefix/dim of the brute-force work),
// takes the k rows with the smallest bound, whose full distances bound the k-th nearest from
// above, and computes the full distance (|q|^2 + |b|^2 - 2 q.b on the original features, as
// the brute force does) only for rows whose bound, less a round-off margin, does not exceed
// the k-th nearest found so far. Same neighbours and distances as the brute force. A query the
// bound cannot serve (a non-finite projected norm) is searched in full. Each search thread
// needs 64 bytes per bank row of workspace (the bound of 16 queries against every row).
class KnnIndex {
public:
    KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads);
    KnnIndex(const float* bank, std::size_t nb, std::size_t dim, const float* basis,
             std::size_t prefix, int threads);
    void search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                std::int64_t* indices, int threads,
                KernelPath path = KernelPath::automatic) const;
    std::size_t size() const { return nb_; }
    std::size_t dim() const { return dim_; }
    // 0 for brute force, else the number of basis rows in the bound.
    std::size_t prefix() const { return prefix_; }

private:
    void search_pruned(const float* queries, std::size_t nq, std::size_t k, float* distances,
                       std::int64_t* indices, int threads, KernelPath path) const;
    void compute_norms(int threads);

    const float* bank_;
    std::size_t nb_;
    std::size_t dim_;
    std::vector<float> norms_;  // squared row norms
    // Brute force: the bank packed for the blocked kernel once (not per search), when that
    // copy is at most kMaxPackedBytes; empty otherwise.
    std::vector<float> packed_bank_;
    // Pruned form only.
    std::size_t prefix_ = 0;
    std::vector<float> basis_;          // prefix x dim
    std::vector<float> bound_norms_;    // |Ub|^2 less the row's round-off margin, +Inf-padded
                                        // to whole 24-row kernel tiles
    std::vector<float> packed_prefix_;  // the projected rows in the kernel's tiles
    float margin_rate_ = 0.0f;          // round-off margin per unit of squared norm
    float basis_error_ = 0.0f;          // max |U U^T - I|
};

// For each bank row its b nearest bank rows (itself first: ties at distance 0 are broken so
// that the row itself comes first). out is (nb x b) int64.
void bank_neighbours(const float* bank, std::size_t nb, std::size_t dim, std::size_t b,
                     std::int64_t* out, int threads, KernelPath path = KernelPath::automatic);

namespace detail {
// Throws std::invalid_argument unless 1 <= k <= nb (k nearest of a bank of nb rows).
void check_k(std::size_t k, std::size_t nb);

// Size of one query panel of the blocked kernel (the AVX2 micro-kernel computes 16 queries x
// 6 bank rows at a time).
constexpr std::size_t kPanel = 16;
constexpr std::size_t kBankTile = 6;

// Packs rows [row0, row0 + rows) of x (rows <= 16) into dst[dim][16], zero-padding missing rows.
void pack_panel(const float* x, std::size_t row0, std::size_t rows, std::size_t dim, float* dst);

// Packs bank rows [j0, j1) x columns [kc0, kc1) into dst[tile][kc1 - kc0][6] (tiles of 6 rows,
// the last one zero-padded), so that the micro-kernel reads one contiguous stream.
void pack_bank_block(const float* bank, std::size_t dim, std::size_t kc0, std::size_t kc1,
                     std::size_t j0, std::size_t j1, float* dst);

// out[(j - j0) * 16 + lane] (+)= sum over the kc columns of qpack[kc][16] x bpack rows, for the
// `rows` packed bank rows (out holds whole tiles: ceil(rows / 6) * 6 * 16 floats).
// When norms (the rows' squared norms, padded to whole tiles) is given, hits[tile] gets a bit
// per row for which some lane has norms[j] - 2 * dot <= thr[lane] (16 thresholds); the portable
// kernel sets every bit (the caller checks each candidate exactly anyway).
void panel_dots_avx2(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                     float* out, bool accumulate, const float* norms = nullptr,
                     const float* thr = nullptr, std::uint8_t* hits = nullptr);
void panel_dots_avx512(const float* qpack, const float* bpack, std::size_t kc, std::size_t rows,
                       float* out, bool accumulate, const float* norms = nullptr,
                       const float* thr = nullptr, std::uint8_t* hits = nullptr);
void panel_dots_portable(const float* qpack, const float* bpack, std::size_t kc,
                         std::size_t rows, float* out, bool accumulate,
                         const float* norms = nullptr, const float* thr = nullptr,
                         std::uint8_t* hits = nullptr);

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
}  // namespace detail

}  // namespace autoweld
