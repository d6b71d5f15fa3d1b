// Exact k-nearest-neighbour search (Euclidean) of query rows against a memory bank, and the
// blocked A·Bᵀ product it is built on. Python-free; pointer + counts + caller-allocated outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace autoweld {

// Which kernel runs. `automatic` picks AVX2+FMA when the CPU has it, else the portable one.
// The explicit choices exist so that tests exercise both paths on purpose.
enum class KernelPath { automatic, portable, avx2 };

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

// A bank with its squared norms, built once and searched many times. Holds a pointer to the
// caller's bank (which must outlive it, unchanged) plus the norms it computed.
class KnnIndex {
public:
    KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads);
    void search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                std::int64_t* indices, int threads,
                KernelPath path = KernelPath::automatic) const;
    std::size_t size() const { return nb_; }
    std::size_t dim() const { return dim_; }
    const std::vector<float>& norms() const { return norms_; }

private:
    const float* bank_;
    std::size_t nb_;
    std::size_t dim_;
    std::vector<float> norms_;
};

// For each bank row its b nearest bank rows (itself first: ties at distance 0 are broken so
// that the row itself comes first). out is (nb x b) int64.
void bank_neighbours(const float* bank, std::size_t nb, std::size_t dim, std::size_t b,
                     std::int64_t* out, int threads, KernelPath path = KernelPath::automatic);

namespace detail {
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
void panel_dots_portable(const float* qpack, const float* bpack, std::size_t kc,
                         std::size_t rows, float* out, bool accumulate,
                         const float* norms = nullptr, const float* thr = nullptr,
                         std::uint8_t* hits = nullptr);
}  // namespace detail

}  // namespace autoweld
