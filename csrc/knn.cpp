#include "knn.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "common.hpp"
#include "knn_internal.hpp"
#include "thread_pool.hpp"

namespace autoweld {

namespace {

// Cache blocking of matmul_abt's panel product: a query panel chunk (16 x kKc floats, 16 KiB)
// stays in L1 while the bank rows x kKc stay in L2.
constexpr std::size_t kKc = 256;
// kNN search: the bank is walked in blocks of at most kNc rows, each packed over its full
// depth (up to kMaxKc; deeper features are split), sized so that a block stays in L2 while
// every query panel runs over it. With the full depth in one pass the micro-kernel keeps its
// accumulators in registers from the first to the last column: no partial sums go out to
// memory and back between depth chunks (at D=1536 these cost several percent).
constexpr std::size_t kNc = 240;  // a multiple of kBankTile (and of 24, the AVX-512 tile)
constexpr std::size_t kMaxKc = 2048;
#ifndef AUTOWELD_KNN_BLOCK_BYTES
#define AUTOWELD_KNN_BLOCK_BYTES (384 * 1024)
#endif
constexpr std::size_t kBlockBytes = AUTOWELD_KNN_BLOCK_BYTES;

// Bank rows per block for a depth chunk of kc columns: a multiple of 24 when possible.
std::size_t bank_block_rows(std::size_t kc) {
    std::size_t rows = kBlockBytes / (kc * sizeof(float));
    rows = rows >= 24 ? rows / 24 * 24 : std::max<std::size_t>(6, rows / 6 * 6);
    return std::min(rows, kNc);
}
// knn_search packs a bank up to this size once for all threads (beyond it, per thread).
constexpr std::size_t kSharedPackBytes = std::size_t{64} << 20;
// Queries handled per pass over the bank by one thread: 64 panels = 1024 queries.
constexpr std::size_t kGroupPanels = 64;

}  // namespace

void require_finite(const float* x, std::size_t count, const char* name) {
    // Branch-free per block so that the compiler vectorises it: v - v is 0 for finite v and
    // NaN for NaN and +-Inf. Only a block that fails is searched for the culprit.
    constexpr std::size_t kBlock = 1024;
    for (std::size_t b = 0; b < count; b += kBlock) {
        const std::size_t e = std::min(count, b + kBlock);
        bool ok = true;
        for (std::size_t i = b; i < e; ++i) ok &= (x[i] - x[i]) == 0.0f;
        if (ok) continue;
        for (std::size_t i = b; i < e; ++i)
            if (!std::isfinite(x[i]))
                throw std::invalid_argument(std::string(name) +
                                            " contains NaN or Inf (at flat index " +
                                            std::to_string(i) + ")");
    }
}

void squared_norms(const float* x, std::size_t n, std::size_t dim, float* out, int threads) {
    pool::parallel_for_static(n, threads, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
            const float* r = x + i * dim;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            std::size_t d = 0;
            for (; d + 8 <= dim; d += 8)
                for (std::size_t l = 0; l < 8; ++l) acc[l] += r[d + l] * r[d + l];
            float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            for (; d < dim; ++d) s += r[d] * r[d];
            out[i] = s;
        }
    });
}

void check_k(std::size_t k, std::size_t nb) {
    require(k >= 1, "k must be at least 1, got " + std::to_string(k));
    require(k <= nb, "k (" + std::to_string(k) + ") exceeds the memory bank size (" +
                         std::to_string(nb) + " rows)");
}

namespace detail {

void check_bank_dims(std::size_t nb, std::size_t dim) {
    require(nb >= 1, "bank: memory bank is empty");
    require(dim >= 1, "bank: feature dimension must be at least 1");
}

KnnKernels knn_kernels(Isa cap) {
    return pick_kernels(
        cap,
        KnnKernels{panel_dots_portable, panel_rows_dots_portable, bound_rows_portable,
                   box_bounds_portable},
        KnnKernels{panel_dots_avx2, panel_rows_dots_avx2, bound_rows_avx2, box_bounds_avx2},
        KnnKernels{panel_dots_avx512, panel_rows_dots_avx512, bound_rows_avx512,
                   box_bounds_avx512});
}

void rows_in_fours(FourRows four_rows, const float* qt, const float* const* rows,
                   std::size_t count, std::size_t n, float* out) {
    std::size_t r = 0;
    for (; r + 4 <= count; r += 4) four_rows(qt, rows + r, n, out + r * kPanel);
    if (r == count) return;
    const float* last[4];
    float tmp[4 * kPanel];
    for (std::size_t t = 0; t < 4; ++t) last[t] = rows[std::min(r + t, count - 1)];
    four_rows(qt, last, n, tmp);
    std::copy(tmp, tmp + (count - r) * kPanel, out + r * kPanel);
}

void panel_rows_dots_portable(const float* qt, const float* const* rows, std::size_t count,
                              std::size_t n, float* out) {
    for (std::size_t r = 0; r < count; ++r) {
        float acc[kPanel] = {};
        for (std::size_t d = 0; d < n; ++d) {
            const float b = rows[r][d];
            for (std::size_t l = 0; l < kPanel; ++l) acc[l] += b * qt[d * kPanel + l];
        }
        std::copy(acc, acc + kPanel, out + r * kPanel);
    }
}

std::size_t bound_rows_portable(const float* dots, const float* norms, std::size_t rows,
                                const float* thr, std::uint32_t* hit_rows,
                                std::uint16_t* hit_lanes) {
    std::size_t count = 0;
    for (std::size_t j = 0; j < rows; ++j) {
        unsigned mask = 0;
        for (std::size_t l = 0; l < kPanel; ++l)
            mask |= static_cast<unsigned>(norms[j] - 2.0f * dots[j * kPanel + l] <= thr[l]) << l;
        hit_rows[count] = static_cast<std::uint32_t>(j);
        hit_lanes[count] = static_cast<std::uint16_t>(mask);
        count += mask != 0;
    }
    return count;
}

void box_bounds_portable(const float* ppack, const float* boxes, std::size_t count,
                         std::size_t m, float* out, float* nearest) {
    for (std::size_t t = 0; t < count; ++t) {
        const float* lo = boxes + t * 2 * m;
        const float* hi = lo + m;
        float acc[kPanel] = {};
        for (std::size_t d = 0; d < m; ++d) {
            const float* x = ppack + d * kPanel;
            for (std::size_t l = 0; l < kPanel; ++l) {
                const float g = std::max(std::max(lo[d] - x[l], x[l] - hi[d]), 0.0f);
                acc[l] += g * g;
            }
        }
        std::copy(acc, acc + kPanel, out + t * kPanel);
        nearest[t] = *std::min_element(acc, acc + kPanel);
    }
}

void finish_row(float qn, const float* value, const std::int64_t* index, std::size_t k,
                float* distances, std::int64_t* indices) {
    // sqrt(max(0, |q|^2 + v)); sorted by (distance, index) so that equal distances (exact
    // ties, or several rows clamped to 0) list the lower index first.
    using Entry = std::pair<float, std::int64_t>;
    constexpr std::size_t kStack = 32;  // no allocation per query for the usual k
    Entry stack[kStack];
    std::vector<Entry> heap_rows(k > kStack ? k : 0);
    Entry* row = k > kStack ? heap_rows.data() : stack;
    for (std::size_t t = 0; t < k; ++t)
        row[t] = {std::sqrt(std::max(0.0f, qn + value[t])), index[t]};
    std::sort(row, row + k);
    for (std::size_t t = 0; t < k; ++t) {
        distances[t] = row[t].first;
        indices[t] = row[t].second;
    }
}

void pack_panel(const float* x, std::size_t row0, std::size_t rows, std::size_t dim,
                float* dst) {
    for (std::size_t lane = rows; lane < kPanel; ++lane)
        for (std::size_t d = 0; d < dim; ++d) dst[d * kPanel + lane] = 0.0f;
    for (std::size_t lane = 0; lane < rows; ++lane) {
        const float* r = x + (row0 + lane) * dim;
        for (std::size_t d = 0; d < dim; ++d) dst[d * kPanel + lane] = r[d];
    }
}

void pack_bank_block(const float* bank, std::size_t dim, std::size_t kc0, std::size_t kc1,
                     std::size_t j0, std::size_t j1, float* dst) {
    const std::size_t kc = kc1 - kc0;
    for (std::size_t t = j0; t < j1; t += kBankTile) {
        const std::size_t rows = std::min(kBankTile, j1 - t);
        if (rows == kBankTile) {
            // Sequential writes, six sequential reads.
            const float* s0 = bank + t * dim + kc0;
            for (std::size_t k = 0; k < kc; ++k) {
                float* o = dst + k * kBankTile;
                for (std::size_t r = 0; r < kBankTile; ++r) o[r] = s0[r * dim + k];
            }
        } else {
            for (std::size_t k = 0; k < kc; ++k)
                for (std::size_t r = 0; r < kBankTile; ++r)
                    dst[k * kBankTile + r] = r < rows ? bank[(t + r) * dim + kc0 + k] : 0.0f;
        }
        dst += kc * kBankTile;
    }
}

void panel_dots_portable(const float* qpack, const float* bpack, std::size_t kc,
                         std::size_t rows, float* out, bool accumulate, const float* norms,
                         const float*, std::uint8_t* hits) {
    const std::size_t tiles = (rows + kBankTile - 1) / kBankTile;
    for (std::size_t t = 0; t < tiles; ++t) {
        if (norms != nullptr && hits != nullptr) hits[t] = (1u << kBankTile) - 1;
        const float* b = bpack + t * kc * kBankTile;
        for (std::size_t r = 0; r < kBankTile; ++r) {
            float acc[kPanel];
            float* dst = out + (t * kBankTile + r) * kPanel;
            for (std::size_t l = 0; l < kPanel; ++l) acc[l] = accumulate ? dst[l] : 0.0f;
            for (std::size_t k = 0; k < kc; ++k) {
                const float v = b[k * kBankTile + r];
                const float* q = qpack + k * kPanel;
                for (std::size_t l = 0; l < kPanel; ++l) acc[l] += q[l] * v;
            }
            for (std::size_t l = 0; l < kPanel; ++l) dst[l] = acc[l];
        }
    }
}

}  // namespace detail

namespace {

using detail::AlignedFloats;
using detail::PanelDots;
using detail::TopK;

}  // namespace

namespace detail {

std::size_t packed_bank_floats(std::size_t nb, std::size_t dim) {
    return round_up(nb, kBankTile) * dim;
}

void pack_bank(const float* bank, std::size_t nb, std::size_t dim, float* dst, int threads,
               float* norms) {
    // The layout knn_core walks: blocks of bank_block_rows() rows, each holding its depth
    // chunks one after the other, each chunk in 6-row tiles (pack_bank_block).
    const std::size_t kc_block = std::min(dim, kMaxKc);
    const std::size_t nc = bank_block_rows(kc_block);
    pool::parallel_for_static((nb + nc - 1) / nc, threads, [&](std::size_t b0, std::size_t b1) {
        for (std::size_t b = b0; b < b1; ++b) {
            const std::size_t j0 = b * nc, j1 = std::min(nb, j0 + nc);
            for (std::size_t kc0 = 0; kc0 < dim; kc0 += kc_block)
                pack_bank_block(bank, dim, kc0, std::min(dim, kc0 + kc_block), j0, j1,
                                dst + j0 * dim + round_up(j1 - j0, kBankTile) * kc0);
            // The block's rows are still in cache: their norms cost no second pass over memory.
            if (norms != nullptr) squared_norms(bank + j0 * dim, j1 - j0, dim, norms + j0, 1);
        }
    });
}

}  // namespace detail

namespace {

// Core of knn_search once everything is checked: every thread owns a contiguous set of
// 16-query panels, packs them once, and walks the bank in blocks of kNc rows; the dot products
// of a block are turned into v = |b|^2 - 2 q.b and merged into each query's top-k heap (v is
// the squared distance minus |q|^2, which ranks bank rows the same way).
// (The bank's norms and, when it is given, its packed layout are set in `prepared` by now.)
void knn_core(const detail::PreparedBank& prepared, const float* queries, std::size_t nq,
              std::size_t k, float* distances, std::int64_t* indices, int threads,
              PanelDots dots) {
    using detail::kPanel;
    const float* bank = prepared.rows;
    const float* bn = prepared.norms;
    const float* prepacked = prepared.packed;
    const std::size_t nb = prepared.size, dim = prepared.dim;
    const std::size_t panels = (nq + kPanel - 1) / kPanel;
    // Each thread computes the squared norms of its own queries (no extra parallel region).
    std::vector<float> qn(nq);
    // One pass over the bank per group of at most kGroupPanels panels bounds the workspace
    // (packed queries, dot-product block, heaps) whatever the number of queries.
    auto run_group = [&](std::size_t p0, std::size_t p1) {
        const std::size_t np = p1 - p0;
        {
            const std::size_t q0 = p0 * kPanel, q1 = std::min(nq, p1 * kPanel);
            squared_norms(queries + q0 * dim, q1 - q0, dim, qn.data() + q0, 1);
            require_finite(qn.data() + q0, q1 - q0,
                           "queries (squared row norms overflow float32)");
        }
        AlignedFloats qpack(np * kPanel * dim);
        const std::size_t kc_block = std::min(dim, kMaxKc);
        const std::size_t nc = bank_block_rows(kc_block);
        std::vector<float> block(np * nc * kPanel);
        AlignedFloats bpack(prepacked ? 0 : nc * kc_block);
        std::vector<float> heap_v(np * kPanel * k);
        std::vector<std::int64_t> heap_i(np * kPanel * k);
        for (std::size_t p = 0; p < np; ++p) {
            const std::size_t row0 = (p0 + p) * kPanel;
            detail::pack_panel(queries, row0, std::min(kPanel, nq - row0), dim,
                               qpack.data + p * kPanel * dim);
        }
        for (std::size_t q = 0; q < np * kPanel; ++q)
            TopK{heap_v.data() + q * k, heap_i.data() + q * k, k}.reset();
        alignas(32) float thr[kPanel];
        std::uint8_t hits[kNc / detail::kBankTile];
        float block_norms[kNc];
        for (std::size_t j0 = 0; j0 < nb; j0 += nc) {
            const std::size_t j1 = std::min(nb, j0 + nc);
            // Padding rows get +Inf norms; the scan below never looks past j1 anyway.
            std::fill(block_norms, block_norms + kNc, std::numeric_limits<float>::infinity());
            std::copy(bn + j0, bn + j1, block_norms);
            for (std::size_t kc0 = 0; kc0 < dim; kc0 += kc_block) {
                const std::size_t kc1 = std::min(dim, kc0 + kc_block);
                const bool last = kc1 == dim;
                const float* bp = bpack.data;
                if (prepacked)
                    bp = prepacked + j0 * dim + detail::round_up(j1 - j0, detail::kBankTile) * kc0;
                else
                    detail::pack_bank_block(bank, dim, kc0, kc1, j0, j1, bpack.data);
                for (std::size_t p = 0; p < np; ++p) {
                    float* out = block.data() + p * nc * kPanel;
                    const std::size_t row0 = (p0 + p) * kPanel;
                    const std::size_t lanes = std::min(kPanel, nq - row0);
                    if (last)
                        for (std::size_t l = 0; l < kPanel; ++l)
                            thr[l] = l < lanes ? heap_v[(p * kPanel + l) * k]
                                               : -std::numeric_limits<float>::infinity();
                    dots(qpack.data + p * kPanel * dim + kc0 * kPanel, bp, kc1 - kc0,
                         j1 - j0, out, kc0 > 0, last ? block_norms : nullptr, thr, hits);
                    if (!last) continue;
                    detail::merge_hits(hits, j0, j1, out, bn, lanes, thr, [&](std::size_t l) {
                        return TopK{heap_v.data() + (p * kPanel + l) * k,
                                    heap_i.data() + (p * kPanel + l) * k, k};
                    });
                }
            }
        }
        for (std::size_t p = 0; p < np; ++p) {
            const std::size_t row0 = (p0 + p) * kPanel;
            const std::size_t lanes = std::min(kPanel, nq - row0);
            for (std::size_t l = 0; l < lanes; ++l) {
                const std::size_t q = row0 + l;
                detail::finish_row(qn[q], heap_v.data() + (p * kPanel + l) * k,
                                   heap_i.data() + (p * kPanel + l) * k, k, distances + q * k,
                                   indices + q * k);
            }
        }
    };
    pool::parallel_for_static(panels, threads, [&](std::size_t p0, std::size_t p1) {
        for (std::size_t g = p0; g < p1; g += kGroupPanels) run_group(g, std::min(p1, g + kGroupPanels));
    });
}

}  // namespace

void knn_search(const float* queries, std::size_t nq, const float* bank, std::size_t nb,
                std::size_t dim, std::size_t k, float* distances, std::int64_t* indices,
                const KernelOptions& options) {
    detail::knn_search_prepared({bank, nb, dim}, queries, nq, k, distances, indices, options);
}

void detail::knn_search_prepared(const PreparedBank& prepared, const float* queries,
                                 std::size_t nq, std::size_t k, float* distances,
                                 std::int64_t* indices, const KernelOptions& options) {
    const float* bank = prepared.rows;
    const float* bank_norms = prepared.norms;
    const float* packed = prepared.packed;
    const std::size_t nb = prepared.size, dim = prepared.dim;
    const int threads = options.threads;
    detail::check_bank_dims(nb, dim);
    check_k(k, nb);
    const detail::PanelDots dots = detail::knn_kernels(options.isa).dots;
    if (nq == 0) return;
    require_finite(queries, nq * dim, "queries");
    // Every thread walks the whole bank: packed per thread, the bank would be packed once per
    // thread. A bank of modest size is packed once, shared (in a parallel pass of its own that
    // also computes the bank's norms when the caller has none).
    std::unique_ptr<float[]> shared;  // not zero-filled: pack_bank writes every float
    std::vector<float> own_norms;
    if (bank_norms == nullptr) own_norms.resize(nb);
    if (packed == nullptr && resolve_threads(threads) > 1 &&
        detail::packed_bank_floats(nb, dim) * sizeof(float) <= kSharedPackBytes) {
        shared.reset(new float[detail::packed_bank_floats(nb, dim)]);
        detail::pack_bank(bank, nb, dim, shared.get(), threads,
                          bank_norms == nullptr ? own_norms.data() : nullptr);
        packed = shared.get();
    } else if (bank_norms == nullptr) {
        squared_norms(bank, nb, dim, own_norms.data(), threads);
    }
    if (bank_norms == nullptr) {
        // A NaN or Inf anywhere in a row makes that row's squared norm NaN or Inf, so the
        // element-wise pass over the whole bank (for its precise message) is only needed when
        // some norm is not finite: one pass over the bank instead of two.
        bool norms_finite = true;
        for (float v : own_norms) norms_finite &= (v - v) == 0.0f;
        if (!norms_finite) require_finite(bank, nb * dim, "bank");
        require_finite(own_norms.data(), nb, "bank (squared row norms overflow float32)");
        bank_norms = own_norms.data();
    }
    knn_core({bank, nb, dim, bank_norms, packed}, queries, nq, k, distances, indices, threads,
             dots);
}

void matmul_abt(const float* a, std::size_t n, const float* b, std::size_t m, std::size_t dim,
                float* c, const KernelOptions& options) {
    using detail::kPanel;
    if (n == 0 || m == 0) return;
    if (dim == 0) {
        std::fill(c, c + n * m, 0.0f);
        return;
    }
    const detail::PanelDots dots = detail::knn_kernels(options.isa).dots;
    const std::size_t panels = (n + kPanel - 1) / kPanel;
    pool::parallel_for_static(panels, options.threads, [&](std::size_t p0, std::size_t p1) {
        // b is small here (the projection): pack all of it once per thread.
        AlignedFloats qpack(kPanel * dim);
        std::vector<float> out(detail::round_up(m, detail::kBankTile) * kPanel);
        std::vector<AlignedFloats> bpacks;
        bpacks.reserve((dim + kKc - 1) / kKc);
        for (std::size_t kc0 = 0; kc0 < dim; kc0 += kKc) {
            const std::size_t kc1 = std::min(dim, kc0 + kKc);
            bpacks.emplace_back(detail::round_up(m, detail::kBankTile) * (kc1 - kc0));
            detail::pack_bank_block(b, dim, kc0, kc1, 0, m, bpacks.back().data);
        }
        for (std::size_t p = p0; p < p1; ++p) {
            const std::size_t row0 = p * kPanel;
            const std::size_t rows = std::min(kPanel, n - row0);
            detail::pack_panel(a, row0, rows, dim, qpack.data);
            for (std::size_t kc0 = 0, c = 0; kc0 < dim; kc0 += kKc, ++c)
                dots(qpack.data + kc0 * kPanel, bpacks[c].data, std::min(dim, kc0 + kKc) - kc0,
                     m, out.data(), kc0 > 0, nullptr, nullptr, nullptr);
            for (std::size_t l = 0; l < rows; ++l)
                for (std::size_t j = 0; j < m; ++j) c[(row0 + l) * m + j] = out[j * kPanel + l];
        }
    });
}

void bank_neighbours(const float* bank, std::size_t nb, std::size_t dim, std::size_t b,
                     std::int64_t* out, const KernelOptions& options) {
    detail::check_bank_dims(nb, dim);
    require(b >= 1 && b <= nb, "b must be in [1, " + std::to_string(nb) + "], got " +
                                   std::to_string(b));
    std::vector<float> dist(nb * b);
    knn_search(bank, nb, bank, nb, dim, b, dist.data(), out, options);
    // Round-off (or duplicate rows) can put another row ahead of the row itself; the contract
    // is "itself first", so move it there, keeping the order of the others.
    for (std::size_t i = 0; i < nb; ++i) {
        std::int64_t* r = out + i * b;
        const auto self = static_cast<std::int64_t>(i);
        std::int64_t* pos = std::find(r, r + b, self);
        if (pos == r + b) pos = r + b - 1;  // not among them: drop the farthest
        std::copy_backward(r, pos, pos + 1);
        r[0] = self;
    }
}

}  // namespace autoweld
