// KnnIndex: a memory bank prepared for repeated exact kNN search, brute force or pruned with
// a lower bound from a projection onto the bank's principal axes (see knn.hpp).
//
// Why pruning is exact: for a basis U with orthonormal rows, U^T U is an orthogonal projection,
// so |U q - U b| <= |q - b|. A row whose projected distance already exceeds the k-th smallest
// full distance found so far cannot be among the k nearest. Patch features of one product put
// most of their variance on a few axes, so with U the leading principal axes the bound is
// tight and only a few percent of the bank needs the full distance
// (bench/knn_pruning_probe.py measures that share on a bundle).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "common.hpp"
#include "knn.hpp"
#include "knn_internal.hpp"
#include "thread_pool.hpp"

namespace autoweld {

namespace {

using detail::kBankTile;
using detail::kPanel;

// Bank rows per kernel call / filter pass: a multiple of the 24-row AVX-512 tile; small enough
// that the block of dot products (rows x 16 floats) is still in L1 when it is scanned.
constexpr std::size_t kChunk = 240;
// Whole tiles of the AVX-512 kernel: the padding of the per-row arrays it reads.
constexpr std::size_t kTileRows = 24;

constexpr float kInf = std::numeric_limits<float>::infinity();
// Largest packed copy of the bank a brute-force index keeps (beyond it: packed per search).
constexpr std::size_t kMaxPackedBytes = std::size_t{256} << 20;

}  // namespace

// The copy the index owns (so that the caller's array may change or go away), the rows checked
// and their squared norms computed in the same parallel pass while they are in cache.
void KnnIndex::copy_bank(const float* bank, int threads) {
    detail::check_bank_dims(nb_, dim_);
    require_finite(bank, nb_ * dim_, "bank");
    bank_.resize(nb_ * dim_);
    norms_.resize(nb_);
    pool::parallel_for_static(nb_, threads, [&](std::size_t b, std::size_t e) {
        std::copy(bank + b * dim_, bank + e * dim_, bank_.data() + b * dim_);
        squared_norms(bank_.data() + b * dim_, e - b, dim_, norms_.data() + b, 1);
    });
    require_finite(norms_.data(), nb_, "bank (squared row norms overflow float32)");
}

KnnIndex::KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads)
    : nb_(nb), dim_(dim) {
    copy_bank(bank, threads);
    if (detail::packed_bank_floats(nb, dim) * sizeof(float) <= kMaxPackedBytes) {
        packed_bank_.resize(detail::packed_bank_floats(nb, dim));
        detail::pack_bank(bank_.data(), nb, dim, packed_bank_.data(), threads);
    }
}

KnnIndex::KnnIndex(const float* bank, std::size_t nb, std::size_t dim, const float* basis,
                   std::size_t prefix, int threads)
    : nb_(nb), dim_(dim) {
    copy_bank(bank, threads);
    require(prefix >= 1 && prefix < dim, "prefix must be in [1, " + std::to_string(dim) +
                                             "), got " + std::to_string(prefix));
    require_finite(basis, prefix * dim, "basis");
    // The bound is only a bound when the rows are orthonormal: check U U^T = I.
    std::vector<float> gram(prefix * prefix);
    matmul_abt(basis, prefix, basis, prefix, dim, gram.data(), {threads});
    std::size_t at = 0;
    for (std::size_t i = 0; i < prefix * prefix; ++i) {
        const float dev = std::fabs(gram[i] - (i / prefix == i % prefix ? 1.0f : 0.0f));
        if (dev > basis_error_) {
            basis_error_ = dev;
            at = i;
        }
    }
    require(basis_error_ <= 1e-4f,
            "basis must have orthonormal rows: basis @ basis.T differs from the identity by " +
                std::to_string(basis_error_) + " at (" + std::to_string(at / prefix) + ", " +
                std::to_string(at % prefix) + ")");
    prefix_ = prefix;
    basis_.assign(basis, basis + prefix * dim);
    std::vector<float> projected(nb * prefix);
    matmul_abt(bank_.data(), nb, basis_.data(), prefix, dim, projected.data(), {threads});
    bound_norms_.assign(detail::round_up(nb, kTileRows), kInf);
    squared_norms(projected.data(), nb, prefix, bound_norms_.data(), threads);
    require_finite(bound_norms_.data(), nb, "bank (projected squared norms overflow float32)");
    // Round-off: each value compared in the search is a float sum of at most dim products, off
    // by at most dim * eps * (|q|^2 + |b|^2) from the exact one, and a basis orthonormal only to
    // within e stretches the projected squared distance (at most 2 (|q|^2 + |b|^2)) by up to a
    // factor 1 + m e. Twice the first plus the second, per unit of |q|^2 + |b|^2, keeps the
    // filter from ever dropping a row the exact comparison would keep. The row's share of the
    // margin is taken off its bound here, the query's share is added to its threshold.
    margin_rate_ = 2.0f * static_cast<float>(dim) * std::numeric_limits<float>::epsilon() +
                   2.0f * static_cast<float>(prefix) * basis_error_;
    for (std::size_t j = 0; j < nb; ++j) bound_norms_[j] -= margin_rate_ * norms_[j];
    packed_prefix_.resize(detail::round_up(nb, kBankTile) * prefix);
    detail::pack_bank_block(projected.data(), prefix, 0, prefix, 0, nb, packed_prefix_.data());
}

void KnnIndex::search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                      std::int64_t* indices, const KernelOptions& options) const {
    if (prefix_ == 0) {
        const float* packed = packed_bank_.empty() ? nullptr : packed_bank_.data();
        detail::knn_search_prepared({bank_.data(), nb_, dim_, norms_.data(), packed}, queries, nq,
                                    k, distances, indices, options);
        return;
    }
    search_pruned(queries, nq, k, distances, indices, options);
}

void KnnIndex::search_pruned(const float* queries, std::size_t nq, std::size_t k,
                             float* distances, std::int64_t* indices,
                             const KernelOptions& options) const {
    check_k(k, nb_);
    const detail::KnnKernels kernels = detail::knn_kernels(options.isa);
    const detail::PanelDots dots = kernels.dots;
    const detail::PanelRowsDots rows_dots = kernels.rows_dots;
    const detail::BoundRows bound_rows = kernels.bound_rows;
    if (nq == 0) return;
    require_finite(queries, nq * dim_, "queries");
    const int threads = options.threads;
    const std::size_t dim = dim_, m = prefix_, nb = nb_;
    std::vector<float> qn(nq);
    squared_norms(queries, nq, dim, qn.data(), threads);
    require_finite(qn.data(), nq, "queries (squared row norms overflow float32)");
    std::vector<float> projected(nq * m);  // the queries on the basis
    matmul_abt(queries, nq, basis_.data(), m, dim, projected.data(), options);
    std::vector<float> pqn(nq);
    squared_norms(projected.data(), nq, m, pqn.data(), threads);
    const float* pnorms = bound_norms_.data();
    const std::size_t panels = (nq + kPanel - 1) / kPanel;

    pool::parallel_for_static(panels, threads, [&](std::size_t p0, std::size_t p1) {
        detail::AlignedFloats ppack(kPanel * m);    // projected panel, column by column
        detail::AlignedFloats qpack(kPanel * dim);  // the panel itself, column by column
        // The projected dots of every row, written by pass 1 before pass 2 reads them: not
        // zero-filled (that would be a serial pass over 64 bytes a row on every search).
        std::unique_ptr<float[]> block(new float[detail::round_up(nb, kTileRows) * kPanel]);
        std::vector<std::uint8_t> hits(detail::round_up(nb, kTileRows) / kBankTile);
        std::vector<float> seed_v(kPanel * k), heap_v(kPanel * k);
        std::vector<std::int64_t> seed_i(kPanel * k), heap_i(kPanel * k);
        const std::size_t max_rows = std::max(kChunk, k);
        std::vector<const float*> row_ptr(max_rows);
        std::vector<float> row_dots(max_rows * kPanel);  // 16 dot products per bank row
        std::uint32_t hit_rows[kChunk];
        std::uint16_t hit_lanes[kChunk];
        alignas(64) float thr[kPanel];
        float upper[kPanel], slack[kPanel];
        for (std::size_t p = p0; p < p1; ++p) {
            const std::size_t row0 = p * kPanel;
            const std::size_t lanes = std::min(kPanel, nq - row0);
            detail::pack_panel(projected.data(), row0, lanes, m, ppack.data);
            detail::pack_panel(queries, row0, lanes, dim, qpack.data);
            auto seeds = [&](std::size_t l) {
                return detail::TopK{seed_v.data() + l * k, seed_i.data() + l * k, k};
            };
            auto heap = [&](std::size_t l) {
                return detail::TopK{heap_v.data() + l * k, heap_i.data() + l * k, k};
            };
            // Lanes the bound cannot serve are searched in full at the end.
            bool exhaustive[kPanel] = {};
            for (std::size_t l = 0; l < kPanel; ++l) {
                seeds(l).reset();
                heap(l).reset();
                thr[l] = l < lanes ? kInf : -kInf;  // padding lanes never pass
            }
            // Pass 1: the projected part |Ub|^2 - 2 Uq.Ub of every row (its dot kept in
            // `block`), and per query the k rows where it is smallest.
            for (std::size_t j0 = 0; j0 < nb; j0 += kChunk) {
                const std::size_t j1 = std::min(nb, j0 + kChunk);
                dots(ppack.data, packed_prefix_.data() + j0 * m, m, j1 - j0,
                     block.get() + j0 * kPanel, false, pnorms + j0, thr, hits.data());
                detail::merge_hits(hits.data(), j0, j1, block.get() + j0 * kPanel, pnorms, lanes,
                                   thr, seeds);
            }
            // The seeds' full values |b|^2 - 2 q.b bound the k-th nearest from above: a row can
            // beat that bound only if |Ub|^2 - 2 Uq.Ub <= upper + |q|^2 - |Uq|^2.
            for (std::size_t l = 0; l < lanes; ++l) {
                const float qn_l = qn[row0 + l];
                slack[l] = qn_l - pqn[row0 + l] + margin_rate_ * qn_l;
                if (!seeds(l).full() || !std::isfinite(slack[l])) {
                    exhaustive[l] = true;  // no bound for this query (its projection overflows)
                    thr[l] = -kInf;
                    continue;
                }
                const std::int64_t* lane_seeds = seed_i.data() + l * k;
                for (std::size_t t = 0; t < k; ++t)
                    row_ptr[t] = bank_.data() + static_cast<std::size_t>(lane_seeds[t]) * dim;
                rows_dots(qpack.data, row_ptr.data(), k, dim, row_dots.data());
                float tau = -kInf;
                for (std::size_t t = 0; t < k; ++t)
                    tau = std::max(tau, norms_[static_cast<std::size_t>(lane_seeds[t])] -
                                            2.0f * row_dots[t * kPanel + l]);
                upper[l] = tau;
                thr[l] = tau + slack[l];
            }
            // Pass 2: full values for the rows that pass the bound for some query of the panel,
            // chunk by chunk, the bound tightening as nearer rows are found.
            for (std::size_t j0 = 0; j0 < nb; j0 += kChunk) {
                const std::size_t j1 = std::min(nb, j0 + kChunk);
                const std::size_t count = bound_rows(block.get() + j0 * kPanel, pnorms + j0,
                                                     j1 - j0, thr, hit_rows, hit_lanes);
                if (count == 0) continue;
                for (std::size_t r = 0; r < count; ++r)
                    row_ptr[r] = bank_.data() + (j0 + hit_rows[r]) * dim;
                rows_dots(qpack.data, row_ptr.data(), count, dim, row_dots.data());
                for (std::size_t r = 0; r < count; ++r) {
                    const std::size_t j = j0 + hit_rows[r];
                    for (unsigned mask = hit_lanes[r]; mask != 0; mask &= mask - 1) {
                        const auto l = static_cast<std::size_t>(__builtin_ctz(mask));
                        auto h = heap(l);
                        h.push(norms_[j] - 2.0f * row_dots[r * kPanel + l],
                               static_cast<std::int64_t>(j));
                        if (h.full()) thr[l] = std::min(upper[l], h.threshold()) + slack[l];
                    }
                }
            }
            for (std::size_t l = 0; l < lanes; ++l) {
                auto h = heap(l);
                const std::size_t q = row0 + l;
                if (exhaustive[l] || !h.full()) {
                    // No bound for this query, or round-off beyond the margin kept a seed out:
                    // search it in full (from an empty heap: no row may enter twice).
                    h.reset();
                    for (std::size_t j0 = 0; j0 < nb; j0 += kChunk) {
                        const std::size_t count = std::min(kChunk, nb - j0);
                        for (std::size_t r = 0; r < count; ++r)
                            row_ptr[r] = bank_.data() + (j0 + r) * dim;
                        rows_dots(qpack.data, row_ptr.data(), count, dim, row_dots.data());
                        for (std::size_t r = 0; r < count; ++r)
                            h.push(norms_[j0 + r] - 2.0f * row_dots[r * kPanel + l],
                                   static_cast<std::int64_t>(j0 + r));
                    }
                }
                detail::finish_row(qn[q], h.value, h.index, k, distances + q * k,
                                   indices + q * k);
            }
        }
    });
}

}  // namespace autoweld
