// Pieces the exact kNN searches share (knn.cpp: brute force; knn_pruned.cpp: the pruned
// search of KnnIndex). Internal to the core: not part of its interface.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "knn.hpp"

namespace autoweld::detail {

using PanelDots = void (*)(const float*, const float*, std::size_t, std::size_t, float*, bool,
                           const float*, const float*, std::uint8_t*);
using PanelRowsDots = void (*)(const float*, const float* const*, std::size_t, std::size_t,
                               float*);
using BoundRows = std::size_t (*)(const float*, const float*, std::size_t, const float*,
                                  std::uint32_t*, std::uint16_t*);

// The panel kernels and the bound filter for `path` (automatic: the best this CPU
// runs). Throws std::invalid_argument when an explicit path is not available here.
PanelDots resolve_dots(KernelPath path);
PanelRowsDots resolve_panel_rows_dots(KernelPath path);
BoundRows resolve_bound_rows(KernelPath path);

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// Throws unless the bank has rows and columns.
void check_bank_dims(std::size_t nb, std::size_t dim);

// Bounded max-heap of (value, index) pairs ordered by value, then index: the root is the worst
// kept candidate, so a new one enters when it beats the root.
struct TopK {
    float* value;
    std::int64_t* index;
    std::size_t k;

    static bool worse(float va, std::int64_t ia, float vb, std::int64_t ib) {
        return va > vb || (va == vb && ia > ib);
    }
    void reset() {
        std::fill(value, value + k, std::numeric_limits<float>::infinity());
        std::fill(index, index + k, std::numeric_limits<std::int64_t>::max());
    }
    float threshold() const { return value[0]; }
    bool full() const { return index[0] != std::numeric_limits<std::int64_t>::max(); }
    void push(float v, std::int64_t j) {
        if (!worse(value[0], index[0], v, j)) return;
        std::size_t i = 0;
        for (;;) {
            std::size_t l = 2 * i + 1;
            if (l >= k) break;
            std::size_t r = l + 1;
            std::size_t w = (r < k && worse(value[r], index[r], value[l], index[l])) ? r : l;
            if (!worse(value[w], index[w], v, j)) break;
            value[i] = value[w];
            index[i] = index[w];
            i = w;
        }
        value[i] = v;
        index[i] = j;
    }
};

// 32-byte aligned float buffer (the AVX2 kernel uses aligned loads on packed panels).
struct AlignedFloats {
    std::vector<float> storage;
    float* data = nullptr;
    explicit AlignedFloats(std::size_t n) : storage(n + 8) {
        auto p = reinterpret_cast<std::uintptr_t>(storage.data());
        data = storage.data() + ((32 - (p & 31)) & 31) / sizeof(float);
    }
};

// The bank in the packed layout the brute-force search walks (its blocks of rows, each depth
// chunk in 6-row tiles): packed_bank_floats(nb, dim) floats, filled by pack_bank, which also
// writes the rows' squared norms to `norms` (nb floats) unless it is nullptr.
std::size_t packed_bank_floats(std::size_t nb, std::size_t dim);
void pack_bank(const float* bank, std::size_t nb, std::size_t dim, float* dst, int threads,
               float* norms = nullptr);

// knn_search with the bank already packed by pack_bank (nullptr: packed here).
void knn_search_packed(const float* queries, std::size_t nq, const float* bank,
                       const float* bank_norms, const float* packed, std::size_t nb,
                       std::size_t dim, std::size_t k, float* distances, std::int64_t* indices,
                       int threads, KernelPath path);

// Writes the k kept (value, index) pairs of one query as Euclidean distances
// sqrt(max(0, qn + value)) sorted by (distance, index) into distances / indices (k each).
void finish_row(float qn, const float* value, const std::int64_t* index, std::size_t k,
                float* distances, std::int64_t* indices);

}  // namespace autoweld::detail
