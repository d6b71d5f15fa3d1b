// Exact k-nearest-neighbour search (Euclidean) of query rows against a memory bank, and the
// blocked A·Bᵀ product it is built on. Python-free; pointer + counts + caller-allocated outputs,
// and per-call options (threads, ISA cap: isa.hpp) as faiss passes SearchParameters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.hpp"

namespace autoweld {

// out[i] = sum over d < dim of x[i*dim + d]^2, for n rows of length dim.
void squared_norms(const float* x, std::size_t n, std::size_t dim, float* out, int threads);

// Throws std::invalid_argument naming `name` when any of the n*dim values is NaN or ±Inf.
void require_finite(const float* x, std::size_t count, const char* name);

// Throws std::invalid_argument unless 1 <= k <= nb (k nearest of a bank of nb rows).
void check_k(std::size_t k, std::size_t nb);

// c[i*m + j] = <a_i, b_j> for a (n x dim) and b (m x dim), both row-major.
void matmul_abt(const float* a, std::size_t n, const float* b, std::size_t m, std::size_t dim,
                float* c, const KernelOptions& options = {});

// For each of the nq query rows, the k nearest of the nb bank rows: Euclidean (not squared)
// distance, ascending; equal distances keep the lower bank index first. distances (nq x k)
// float and indices (nq x k) int64 are written by the function. Checks: nb >= 1, dim >= 1,
// 1 <= k <= nb, finite values.
void knn_search(const float* queries, std::size_t nq, const float* bank, std::size_t nb,
                std::size_t dim, std::size_t k, float* distances, std::int64_t* indices,
                const KernelOptions& options = {});

// A memory bank prepared for repeated exact search, in one of two forms. Either way the index
// owns a copy of the bank's rows (bank()), so nothing the caller does to its array afterwards
// changes the results, plus what it computed from them.
//
// Brute force (first constructor): the bank's squared norms (and the bank packed for the
// blocked kernel); search() gives knn_search()'s result. On a CPU with AVX-512 BF16 a k = 1
// search scans the bank in bf16 first and computes the FP32 value only for the rows whose bf16
// value, less a proven error bound, can still be the nearest (search_bf16 in knn_index.cpp).
//
// Pruned (second constructor): `basis` (prefix x dim, row-major) has orthonormal rows - in
// practice the bank's leading principal axes. For orthonormal rows U, |U(q - b)| <= |q - b|:
// the distance between the projections is a lower bound of the full one. The index keeps its
// rows in tiles of 24 that are close in the projection (the leaves of a k-d tree on it), with
// each tile's bounding box there. search() takes the queries in panels of 16: it bounds each
// query's distance to every box, visits the tiles nearest the panel first, and skips every tile
// whose box is farther than the k-th nearest found so far (plus a round-off margin) for all 16
// queries; for the rows of the other tiles it computes the projected bound, and the full
// distance (|q|^2 + |b|^2 - 2 q.b on the original features, as the brute force does) only where
// that bound, less a round-off margin, does not exceed the k-th nearest found so far. A query
// that still has more than half the tiles in reach after the nearest ones (an anomalous patch)
// leaves its panel, so that its neighbours do not pay for its search, and is searched
// afterwards in panels of such queries. Same neighbours and distances as the brute force. A
// query the bound cannot serve (a non-finite projected norm) is searched in full. Each search
// thread needs about 3.3 bytes per bank row of workspace (per 24-row tile: 16 box distances,
// the nearest of them, its place in the visiting order and a lane mask).
class KnnIndex {
public:
    KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads);
    KnnIndex(const float* bank, std::size_t nb, std::size_t dim, const float* basis,
             std::size_t prefix, int threads);
    void search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                std::int64_t* indices, const KernelOptions& options = {}) const;
    std::size_t size() const { return nb_; }
    std::size_t dim() const { return dim_; }
    // The index's own copy of the bank (size() x dim(), row-major).
    const float* bank() const { return bank_.data(); }
    // 0 for brute force, else the number of basis rows in the bound.
    std::size_t prefix() const { return prefix_; }

private:
    void search_pruned(const float* queries, std::size_t nq, std::size_t k, float* distances,
                       std::int64_t* indices, const KernelOptions& options) const;
    void copy_bank(const float* bank, int threads);
    bool search_bf16(const float* queries, std::size_t nq, float* distances,
                     std::int64_t* indices, const KernelOptions& options) const;
    struct PanelSource;
    void search_panels(const PanelSource& src, std::size_t k, float* distances,
                       std::int64_t* indices, const KernelOptions& options,
                       std::vector<std::uint32_t>* hard) const;

    std::size_t nb_;
    std::size_t dim_;
    std::vector<float> bank_;   // nb x dim, the caller's rows as they were at construction
    std::vector<float> norms_;  // squared row norms
    float max_norm_ = 0.0f;     // the largest of them
    // Brute force: the bank packed for the blocked kernel once (not per search), when that
    // copy is at most kMaxPackedBytes; empty otherwise.
    std::vector<float> packed_bank_;
    // Brute force on a CPU with AVX-512 BF16 (k = 1): the bank as bf16 pairs in the kernel's
    // tiles, and its squared norms stretched up / shrunk by bf16_rate_ (see search_bf16).
    std::vector<std::uint32_t> packed_bf16_;
    std::vector<float> bf16_upper_, bf16_lower_;
    double bf16_rate_ = 0.0;
    // Pruned form only.
    std::size_t prefix_ = 0;
    std::vector<float> basis_;          // prefix x dim
    std::vector<float> bound_norms_;    // |Ub|^2 less the row's round-off margin, +Inf-padded
                                        // to whole 24-row kernel tiles
    std::vector<float> packed_prefix_;  // the projected rows in the kernel's tiles, tile order
    // Tile order: bank row at each position (rows 24t..24t+23 form tile t); bound_norms_ and
    // packed_prefix_ follow it, bank_ and norms_ keep the caller's order.
    std::vector<std::uint32_t> order_;
    std::vector<float> boxes_;          // per tile: prefix lower corners, then prefix upper ones
    float margin_rate_ = 0.0f;          // round-off margin per unit of squared norm
    float basis_error_ = 0.0f;          // max |U U^T - I|
};

// For each bank row its b nearest bank rows (itself first: ties at distance 0 are broken so
// that the row itself comes first). out is (nb x b) int64.
void bank_neighbours(const float* bank, std::size_t nb, std::size_t dim, std::size_t b,
                     std::int64_t* out, const KernelOptions& options = {});

}  // namespace autoweld
