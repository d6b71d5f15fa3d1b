#include "knn.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "common.hpp"

namespace autoweld {

namespace {

// Cache blocking of the panel product: a query panel chunk (16 x kKc floats, 16 KiB) stays in
// L1 while kNc bank rows x kKc (240 KiB) stay in L2.
constexpr std::size_t kKc = 256;
constexpr std::size_t kNc = 240;  // a multiple of kBankTile
// Queries handled per pass over the bank by one thread: 64 panels = 1024 queries.
constexpr std::size_t kGroupPanels = 64;

bool resolve_avx2(KernelPath path) {
    switch (path) {
        case KernelPath::portable:
            return false;
        case KernelPath::avx2:
            require(cpu_has_avx2_fma(), "kernel path avx2 is not available on this CPU");
            return true;
        default:
            return cpu_has_avx2_fma();
    }
}

using PanelDots = void (*)(const float*, const float*, std::size_t, std::size_t, float*, bool,
                           const float*, const float*, std::uint8_t*);

std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

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

void check_dims(std::size_t nb, std::size_t dim) {
    require(nb >= 1, "bank: memory bank is empty");
    require(dim >= 1, "bank: feature dimension must be at least 1");
}

}  // namespace

bool kernel_path_available(KernelPath path) {
    return path != KernelPath::avx2 || cpu_has_avx2_fma();
}

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
    parallel_for(n, threads, [&](std::size_t b, std::size_t e) {
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

namespace detail {

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

// 32-byte aligned float buffer (the AVX2 kernel uses aligned loads on packed panels).
struct AlignedFloats {
    std::vector<float> storage;
    float* data = nullptr;
    explicit AlignedFloats(std::size_t n) : storage(n + 8) {
        auto p = reinterpret_cast<std::uintptr_t>(storage.data());
        data = storage.data() + ((32 - (p & 31)) & 31) / sizeof(float);
    }
};

// Core of knn_search once everything is checked: every thread owns a contiguous set of
// 16-query panels, packs them once, and walks the bank in blocks of kNc rows; the dot products
// of a block are turned into v = |b|^2 - 2 q.b and merged into each query's top-k heap (v is
// the squared distance minus |q|^2, which ranks bank rows the same way).
void knn_core(const float* queries, std::size_t nq, const float* bank, const float* bn,
              std::size_t nb, std::size_t dim, std::size_t k, float* distances,
              std::int64_t* indices, int threads, bool avx2) {
    using detail::kPanel;
    const PanelDots dots = avx2 ? detail::panel_dots_avx2 : detail::panel_dots_portable;
    const std::size_t panels = (nq + kPanel - 1) / kPanel;
    std::vector<float> qn(nq);
    squared_norms(queries, nq, dim, qn.data(), threads);
    require_finite(qn.data(), nq, "queries (squared row norms overflow float32)");
    // One pass over the bank per group of at most kGroupPanels panels bounds the workspace
    // (packed queries, dot-product block, heaps) whatever the number of queries.
    auto run_group = [&](std::size_t p0, std::size_t p1) {
        const std::size_t np = p1 - p0;
        AlignedFloats qpack(np * kPanel * dim);
        std::vector<float> block(np * kNc * kPanel);
        AlignedFloats bpack(kNc * std::min(kKc, dim));
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
        for (std::size_t j0 = 0; j0 < nb; j0 += kNc) {
            const std::size_t j1 = std::min(nb, j0 + kNc);
            // Padding rows get +Inf norms; the scan below never looks past j1 anyway.
            std::fill(block_norms, block_norms + kNc, std::numeric_limits<float>::infinity());
            std::copy(bn + j0, bn + j1, block_norms);
            for (std::size_t kc0 = 0; kc0 < dim; kc0 += kKc) {
                const std::size_t kc1 = std::min(dim, kc0 + kKc);
                const bool last = kc1 == dim;
                detail::pack_bank_block(bank, dim, kc0, kc1, j0, j1, bpack.data);
                for (std::size_t p = 0; p < np; ++p) {
                    float* out = block.data() + p * kNc * kPanel;
                    const std::size_t row0 = (p0 + p) * kPanel;
                    const std::size_t lanes = std::min(kPanel, nq - row0);
                    if (last)
                        for (std::size_t l = 0; l < kPanel; ++l)
                            thr[l] = l < lanes ? heap_v[(p * kPanel + l) * k]
                                               : -std::numeric_limits<float>::infinity();
                    dots(qpack.data + p * kPanel * dim + kc0 * kPanel, bpack.data, kc1 - kc0,
                         j1 - j0, out, kc0 > 0, last ? block_norms : nullptr, thr, hits);
                    if (!last) continue;
                    const std::size_t tiles = (j1 - j0 + detail::kBankTile - 1) / detail::kBankTile;
                    for (std::size_t t = 0; t < tiles; ++t) {
                        if (hits[t] == 0) continue;
                        for (std::size_t r = 0; r < detail::kBankTile; ++r) {
                            if (!((hits[t] >> r) & 1u)) continue;
                            const std::size_t j = j0 + t * detail::kBankTile + r;
                            if (j >= j1) break;
                            const float* d = out + (j - j0) * kPanel;
                            const float b = bn[j];
                            for (std::size_t l = 0; l < lanes; ++l) {
                                const float v = b - 2.0f * d[l];
                                if (v <= thr[l]) {
                                    TopK h{heap_v.data() + (p * kPanel + l) * k,
                                           heap_i.data() + (p * kPanel + l) * k, k};
                                    h.push(v, static_cast<std::int64_t>(j));
                                    thr[l] = h.threshold();
                                }
                            }
                        }
                    }
                }
            }
        }
        // Final distances: sqrt(max(0, |q|^2 + v)); sort by (distance, index) so that equal
        // distances (exact ties, or several rows clamped to 0) list the lower index first.
        std::vector<std::pair<float, std::int64_t>> row(k);
        for (std::size_t p = 0; p < np; ++p) {
            const std::size_t row0 = (p0 + p) * kPanel;
            const std::size_t lanes = std::min(kPanel, nq - row0);
            for (std::size_t l = 0; l < lanes; ++l) {
                const std::size_t q = row0 + l;
                const float* hv = heap_v.data() + (p * kPanel + l) * k;
                const std::int64_t* hi = heap_i.data() + (p * kPanel + l) * k;
                for (std::size_t t = 0; t < k; ++t)
                    row[t] = {std::sqrt(std::max(0.0f, qn[q] + hv[t])), hi[t]};
                std::sort(row.begin(), row.end());
                for (std::size_t t = 0; t < k; ++t) {
                    distances[q * k + t] = row[t].first;
                    indices[q * k + t] = row[t].second;
                }
            }
        }
    };
    parallel_for(panels, threads, [&](std::size_t p0, std::size_t p1) {
        for (std::size_t g = p0; g < p1; g += kGroupPanels) run_group(g, std::min(p1, g + kGroupPanels));
    });
}

}  // namespace

void knn_search(const float* queries, std::size_t nq, const float* bank, const float* bank_norms,
                std::size_t nb, std::size_t dim, std::size_t k, float* distances,
                std::int64_t* indices, int threads, KernelPath path) {
    check_dims(nb, dim);
    require(k >= 1, "k must be at least 1, got " + std::to_string(k));
    require(k <= nb, "k (" + std::to_string(k) + ") exceeds the memory bank size (" +
                         std::to_string(nb) + " rows)");
    const bool avx2 = resolve_avx2(path);
    if (nq == 0) return;
    require_finite(queries, nq * dim, "queries");
    std::vector<float> own_norms;
    if (bank_norms == nullptr) {
        require_finite(bank, nb * dim, "bank");
        own_norms.resize(nb);
        squared_norms(bank, nb, dim, own_norms.data(), threads);
        require_finite(own_norms.data(), nb, "bank (squared row norms overflow float32)");
        bank_norms = own_norms.data();
    }
    knn_core(queries, nq, bank, bank_norms, nb, dim, k, distances, indices, threads, avx2);
}

KnnIndex::KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads)
    : bank_(bank), nb_(nb), dim_(dim), norms_(nb) {
    check_dims(nb, dim);
    require_finite(bank, nb * dim, "bank");
    squared_norms(bank, nb, dim, norms_.data(), threads);
    require_finite(norms_.data(), nb, "bank (squared row norms overflow float32)");
}

void KnnIndex::search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                      std::int64_t* indices, int threads, KernelPath path) const {
    knn_search(queries, nq, bank_, norms_.data(), nb_, dim_, k, distances, indices, threads,
               path);
}

void matmul_abt(const float* a, std::size_t n, const float* b, std::size_t m, std::size_t dim,
                float* c, int threads, KernelPath path) {
    using detail::kPanel;
    if (n == 0 || m == 0) return;
    if (dim == 0) {
        std::fill(c, c + n * m, 0.0f);
        return;
    }
    const PanelDots dots =
        resolve_avx2(path) ? detail::panel_dots_avx2 : detail::panel_dots_portable;
    const std::size_t panels = (n + kPanel - 1) / kPanel;
    parallel_for(panels, threads, [&](std::size_t p0, std::size_t p1) {
        // b is small here (the projection): pack all of it once per thread.
        AlignedFloats qpack(kPanel * dim);
        std::vector<float> out(round_up(m, detail::kBankTile) * kPanel);
        std::vector<AlignedFloats> bpacks;
        bpacks.reserve((dim + kKc - 1) / kKc);
        for (std::size_t kc0 = 0; kc0 < dim; kc0 += kKc) {
            const std::size_t kc1 = std::min(dim, kc0 + kKc);
            bpacks.emplace_back(round_up(m, detail::kBankTile) * (kc1 - kc0));
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
                     std::int64_t* out, int threads, KernelPath path) {
    check_dims(nb, dim);
    require(b >= 1 && b <= nb, "b must be in [1, " + std::to_string(nb) + "], got " +
                                   std::to_string(b));
    std::vector<float> dist(nb * b);
    knn_search(bank, nb, bank, nullptr, nb, dim, b, dist.data(), out, threads, path);
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
