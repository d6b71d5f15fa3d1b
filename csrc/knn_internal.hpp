// Pieces the exact kNN searches share (knn.cpp: brute force; knn_index.cpp: the pruned
// search of KnnIndex). Internal to the core: not part of its interface. Included only by
// portable files (its inline code must not be compiled with AVX flags: see CMakeLists.txt).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "isa.hpp"
#include "knn.hpp"
#include "knn_kernels.hpp"

namespace autoweld::detail {

using PanelDots = void (*)(const float*, const float*, std::size_t, std::size_t, float*, bool,
                           const float*, const float*, std::uint8_t*);
using PanelRowsDots = void (*)(const float*, const float* const*, std::size_t, std::size_t,
                               float*);
using BoundRows = std::size_t (*)(const float*, const float*, std::size_t, const float*,
                                  std::uint32_t*, std::uint16_t*);
using BoxBounds = void (*)(const float*, const float*, std::size_t, std::size_t, float*,
                           float*);

// The kNN kernel family: the panel product (brute force, A·Bᵀ, the pruned search's bound) and
// the pruned search's row dots, bound filter and tile boxes, all of one ISA.
struct KnnKernels {
    PanelDots dots;
    PanelRowsDots rows_dots;
    BoundRows bound_rows;
    BoxBounds box_bounds;
};
// The best flavour at or below `cap` (pick_kernels: throws when this CPU does not run cap).
KnnKernels knn_kernels(Isa cap);

// Packs rows [row0, row0 + rows) of x (rows <= 16) into dst[dim][16], zero-padding missing rows.
void pack_panel(const float* x, std::size_t row0, std::size_t rows, std::size_t dim, float* dst);

// Packs bank rows [j0, j1) x columns [kc0, kc1) into dst[tile][kc1 - kc0][6] (tiles of 6 rows,
// the last one zero-padded), so that the micro-kernel reads one contiguous stream.
void pack_bank_block(const float* bank, std::size_t dim, std::size_t kc0, std::size_t kc1,
                     std::size_t j0, std::size_t j1, float* dst);

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

// After a panel_dots call with norms and thresholds over bank rows [j0, j1): for each row it
// flagged in `hits` (one byte per 6-row tile) and each of the first `lanes` queries, the value
// v = norms[j] - 2 * dots[(j - j0) * 16 + lane] enters that query's top-k heap (heap_of(lane))
// when it passes thr[lane], and thr[lane] follows the heap's worst kept value.
template <typename HeapOf>
inline void merge_hits(const std::uint8_t* hits, std::size_t j0, std::size_t j1,
                       const float* dots, const float* norms, std::size_t lanes, float* thr,
                       HeapOf&& heap_of) {
    const std::size_t tiles = (j1 - j0 + kBankTile - 1) / kBankTile;
    for (std::size_t t = 0; t < tiles; ++t) {
        for (unsigned bits = hits[t]; bits != 0; bits &= bits - 1) {
            const std::size_t j = j0 + t * kBankTile + static_cast<unsigned>(__builtin_ctz(bits));
            if (j >= j1) break;  // a padding row of the last tile
            const float* d = dots + (j - j0) * kPanel;
            for (std::size_t l = 0; l < lanes; ++l) {
                const float v = norms[j] - 2.0f * d[l];
                if (v <= thr[l]) {
                    TopK h = heap_of(l);
                    h.push(v, static_cast<std::int64_t>(j));
                    thr[l] = h.threshold();
                }
            }
        }
    }
}

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

// A bank with what the search can reuse: its rows' squared norms (nullptr: computed, and the
// rows checked to be finite, by the search) and its pack_bank layout (nullptr: packed by the
// search when that pays).
struct PreparedBank {
    const float* rows;
    std::size_t size;
    std::size_t dim;
    const float* norms = nullptr;
    const float* packed = nullptr;
};

// knn_search on a prepared bank.
void knn_search_prepared(const PreparedBank& bank, const float* queries, std::size_t nq,
                         std::size_t k, float* distances, std::int64_t* indices,
                         const KernelOptions& options);

// Writes the k kept (value, index) pairs of one query as Euclidean distances
// sqrt(max(0, qn + value)) sorted by (distance, index) into distances / indices (k each).
void finish_row(float qn, const float* value, const std::int64_t* index, std::size_t k,
                float* distances, std::int64_t* indices);

}  // namespace autoweld::detail
