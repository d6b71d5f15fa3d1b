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
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>

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
// Pending rows the pruned search gathers before computing their full values (a multiple of the
// four rows the row-dots kernels take at once).
constexpr std::size_t kFlush = 32;
// Tiles the pruned search visits first, nearest first, before it drops those out of reach.
constexpr std::size_t kHead = 16;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kEps = std::numeric_limits<float>::epsilon();
// The bf16 first pass: rounding a float to bf16 moves it by at most 2^-8 of itself, so a product
// of two by at most (2 + 2^-8) 2^-8 of the exact one; the rest of the rate is float round-off.
constexpr double kBf16Rate = 0.0078125 + 0.0000305;
// Rows and queries with larger squared norms stay off the bf16 path (no bf16 overflow, and far
// from the denormals the bf16 kernels flush: see search_bf16).
constexpr float kBf16MaxNorm = 1e30f;
// Largest packed copy of the bank a brute-force index keeps (beyond it: packed per search).
constexpr std::size_t kMaxPackedBytes = std::size_t{256} << 20;

// The float nearest x at or below it / at or above it.
float float_below(double x) {
    const auto f = static_cast<float>(x);
    return static_cast<double>(f) > x ? std::nextafter(f, -kInf) : f;
}
float float_above(double x) {
    const auto f = static_cast<float>(x);
    return static_cast<double>(f) < x ? std::nextafter(f, kInf) : f;
}

// x rounded to bf16 (to nearest, ties to even), as the upper 16 bits of a float; x finite.
std::uint32_t to_bf16(float x) {
    std::uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// Coordinates 2p and 2p + 1 of row (dim long) as a bf16 pair: low half, high half, 0 past dim.
std::uint32_t bf16_pair(const float* row, std::size_t dim, std::size_t p) {
    const std::uint32_t lo = 2 * p < dim ? to_bf16(row[2 * p]) : 0u;
    const std::uint32_t hi = 2 * p + 1 < dim ? to_bf16(row[2 * p + 1]) : 0u;
    return lo | hi << 16;
}

// An order of the n rows of x (n x m) in which each run of kTileRows rows is compact: the
// leaves of a k-d tree, each node split at a multiple of kTileRows along its widest coordinate.
// Any order gives the same search results; this one only makes the tiles' boxes small.
std::vector<std::uint32_t> tile_order(const float* x, std::size_t n, std::size_t m) {
    require(n <= std::numeric_limits<std::uint32_t>::max(), "bank: too many rows for the index");
    std::vector<std::uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    std::vector<std::pair<std::size_t, std::size_t>> todo{{0, n}};
    std::vector<float> mn(m), mx(m);
    std::vector<std::pair<float, std::uint32_t>> keyed;  // a node's rows by the split coordinate
    while (!todo.empty()) {
        const auto [b, e] = todo.back();
        todo.pop_back();
        if (e - b <= kTileRows) continue;
        std::fill(mn.begin(), mn.end(), kInf);
        std::fill(mx.begin(), mx.end(), -kInf);
        // The spread of the node's coordinates, judged on at most about 256 of its rows.
        const std::size_t step = std::max<std::size_t>(1, (e - b) / 256);
        for (std::size_t i = b; i < e; i += step) {
            const float* row = x + std::size_t{order[i]} * m;
            for (std::size_t d = 0; d < m; ++d) {
                mn[d] = std::min(mn[d], row[d]);
                mx[d] = std::max(mx[d], row[d]);
            }
        }
        std::size_t axis = 0;
        for (std::size_t d = 1; d < m; ++d)
            if (mx[d] - mn[d] > mx[axis] - mn[axis]) axis = d;
        const std::size_t h = b + detail::round_up((e - b) / 2, kTileRows);
        keyed.resize(e - b);
        for (std::size_t i = b; i < e; ++i)
            keyed[i - b] = {x[std::size_t{order[i]} * m + axis], order[i]};
        std::nth_element(keyed.begin(), keyed.begin() + static_cast<std::ptrdiff_t>(h - b),
                         keyed.end());
        for (std::size_t i = b; i < e; ++i) order[i] = keyed[i - b].second;
        todo.emplace_back(b, h);
        todo.emplace_back(h, e);
    }
    return order;
}

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
    max_norm_ = *std::max_element(norms_.begin(), norms_.end());
}

KnnIndex::KnnIndex(const float* bank, std::size_t nb, std::size_t dim, int threads)
    : nb_(nb), dim_(dim) {
    copy_bank(bank, threads);
    if (detail::packed_bank_floats(nb, dim) * sizeof(float) <= kMaxPackedBytes) {
        packed_bank_.resize(detail::packed_bank_floats(nb, dim));
        detail::pack_bank(bank_.data(), nb, dim, packed_bank_.data(), threads);
    }
    // The bf16 first pass (search_bf16), where the CPU has it and no value can overflow bf16.
    const std::size_t pairs = (dim + 1) / 2;
    if (cpu_has_avx512_bf16() && detail::bf16_kernels_built() &&
        max_norm_ <= kBf16MaxNorm &&
        detail::round_up(nb, kBankTile) * pairs * sizeof(std::uint32_t) <= kMaxPackedBytes) {
        bf16_rate_ = kBf16Rate + 4.0 * (static_cast<double>(dim) + 8.0) * kEps;
        packed_bf16_.assign(detail::round_up(nb, kBankTile) * pairs, 0u);
        for (std::size_t j = 0; j < nb; ++j)
            for (std::size_t p = 0; p < pairs; ++p)
                packed_bf16_[((j / kBankTile) * pairs + p) * kBankTile + j % kBankTile] =
                    bf16_pair(bank_.data() + j * dim, dim, p);
        bf16_upper_.resize(nb);
        bf16_lower_.resize(nb);
        for (std::size_t j = 0; j < nb; ++j) {
            bf16_upper_[j] = float_above((1.0 + bf16_rate_) * norms_[j]);
            bf16_lower_[j] = float_below((1.0 - bf16_rate_) * norms_[j]);
        }
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
    order_ = tile_order(projected.data(), nb, prefix);
    std::vector<float> sorted(nb * prefix);  // the projected rows in tile order
    for (std::size_t p = 0; p < nb; ++p)
        std::copy_n(projected.data() + std::size_t{order_[p]} * prefix, prefix,
                    sorted.data() + p * prefix);
    projected = {};
    bound_norms_.assign(detail::round_up(nb, kTileRows), kInf);
    squared_norms(sorted.data(), nb, prefix, bound_norms_.data(), threads);
    require_finite(bound_norms_.data(), nb, "bank (projected squared norms overflow float32)");
    // Round-off: each value compared in the search is a float sum of at most dim products, off
    // by at most dim * eps * (|q|^2 + |b|^2) from the exact one, and a basis orthonormal only to
    // within e stretches the projected squared distance (at most 2 (|q|^2 + |b|^2)) by up to a
    // factor 1 + m e. Twice the first plus the second, per unit of |q|^2 + |b|^2, keeps the
    // filter from ever dropping a row the exact comparison would keep. The row's share of the
    // margin is taken off its bound here, the query's share is added to its threshold.
    margin_rate_ = 2.0f * static_cast<float>(dim) * std::numeric_limits<float>::epsilon() +
                   2.0f * static_cast<float>(prefix) * basis_error_;
    for (std::size_t p = 0; p < nb; ++p) bound_norms_[p] -= margin_rate_ * norms_[order_[p]];
    packed_prefix_.resize(detail::round_up(nb, kBankTile) * prefix);
    detail::pack_bank_block(sorted.data(), prefix, 0, prefix, 0, nb, packed_prefix_.data());
    // The tiles' boxes, widened by how far a float projection of a row may be from the exact
    // one (dim * eps * |b| * |u| per coordinate), so that each box holds its rows' exact
    // projections.
    const std::size_t tiles = (nb + kTileRows - 1) / kTileRows;
    boxes_.resize(tiles * 2 * prefix);
    const double widen = (static_cast<double>(dim) + 2.0) * kEps * std::sqrt(1.0 + basis_error_);
    for (std::size_t t = 0; t < tiles; ++t) {
        float* lo = boxes_.data() + t * 2 * prefix;
        float* hi = lo + prefix;
        std::fill(lo, lo + prefix, kInf);
        std::fill(hi, hi + prefix, -kInf);
        float reach = 0.0f;  // the tile's largest squared row norm
        for (std::size_t p = t * kTileRows; p < std::min(nb, (t + 1) * kTileRows); ++p) {
            reach = std::max(reach, norms_[order_[p]]);
            for (std::size_t d = 0; d < prefix; ++d) {
                lo[d] = std::min(lo[d], sorted[p * prefix + d]);
                hi[d] = std::max(hi[d], sorted[p * prefix + d]);
            }
        }
        const double w = widen * std::sqrt(static_cast<double>(reach));
        for (std::size_t d = 0; d < prefix; ++d) {
            lo[d] = float_below(static_cast<double>(lo[d]) - w);
            hi[d] = float_above(static_cast<double>(hi[d]) + w);
        }
    }
}

void KnnIndex::search(const float* queries, std::size_t nq, std::size_t k, float* distances,
                      std::int64_t* indices, const KernelOptions& options) const {
    if (prefix_ == 0 && k == 1 && !packed_bf16_.empty() && options.isa == Isa::avx512 &&
        search_bf16(queries, nq, distances, indices, options))
        return;
    if (prefix_ == 0) {
        const float* packed = packed_bank_.empty() ? nullptr : packed_bank_.data();
        detail::knn_search_prepared({bank_.data(), nb_, dim_, norms_.data(), packed}, queries, nq,
                                    k, distances, indices, options);
        return;
    }
    search_pruned(queries, nq, k, distances, indices, options);
}

// Brute force, k = 1, with a bf16 first pass. The approximate value a = |b|^2 - 2 q~.b~ (q~, b~
// the bf16 roundings, summed in float) is within r (|q|^2 + |b|^2) of the value v = |b|^2 - 2 q.b
// the FP32 brute force computes, r = bf16_rate_ (|q.b - q~.b~| <= (2^-7 + 2^-16) sum |q_i b_i| <=
// that times (|q|^2 + |b|^2) / 2, plus the float sums' round-off on both sides). So the smallest
// a + r (|q|^2 + |b|^2) over the bank bounds the nearest v from above, and only rows with
// a - r (|q|^2 + |b|^2) at or below that bound can be the nearest: those get v exactly as the
// brute force sums it (rows_dots), and the nearest of them is the brute force's answer, ties
// to the lower index included. On patch features the candidates are a few rows per query.
// Returns false, having written nothing, for queries too large for bf16 (the FP32 path serves
// them).
bool KnnIndex::search_bf16(const float* queries, std::size_t nq, float* distances,
                           std::int64_t* indices, const KernelOptions& options) const {
    if (nq == 0) return true;
    require_finite(queries, nq * dim_, "queries");
    const int threads = options.threads;
    const std::size_t dim = dim_, nb = nb_, pairs = (dim + 1) / 2;
    std::vector<float> qn(nq);
    squared_norms(queries, nq, dim, qn.data(), threads);
    require_finite(qn.data(), nq, "queries (squared row norms overflow float32)");
    if (*std::max_element(qn.begin(), qn.end()) > kBf16MaxNorm) return false;
    const detail::KnnKernels kernels = detail::knn_kernels(options.isa);
    const detail::PanelRowsDots rows_dots = kernels.rows_dots;
    const std::size_t panels = (nq + kPanel - 1) / kPanel;
    pool::parallel_for_static(panels, threads, [&](std::size_t p0, std::size_t p1) {
        std::vector<std::uint32_t> qbf(pairs * kPanel);
        detail::AlignedFloats qpack(kPanel * dim);
        std::vector<const float*> row_ptr(kChunk);
        std::vector<float> row_dots(kChunk * kPanel);
        std::uint32_t hit_rows[kChunk];
        std::uint16_t hit_lanes[kChunk];
        alignas(64) float slack[kPanel];
        alignas(64) float minima[kPanel];
        float best_v[kPanel];
        std::int64_t best_i[kPanel];
        for (std::size_t p = p0; p < p1; ++p) {
            const std::size_t row0 = p * kPanel;
            const std::size_t lanes = std::min(kPanel, nq - row0);
            for (std::size_t pr = 0; pr < pairs; ++pr)
                for (std::size_t l = 0; l < kPanel; ++l)
                    qbf[pr * kPanel + l] =
                        l < lanes ? bf16_pair(queries + (row0 + l) * dim, dim, pr) : 0u;
            detail::pack_panel(queries, row0, lanes, dim, qpack.data);
            for (std::size_t l = 0; l < kPanel; ++l) {
                minima[l] = kInf;
                best_v[l] = kInf;
                best_i[l] = std::numeric_limits<std::int64_t>::max();
                // Both margins' query share, rounded up, with an absolute 1e-30 for the
                // products of denormal bf16 values the kernel flushes to zero; padding lanes
                // never pass.
                slack[l] = l < lanes ? float_above(2.0 * bf16_rate_ * qn[row0 + l] + 1e-30)
                                     : -kInf;
            }
            // One pass: the candidates of each chunk against the bound so far (a bound that
            // only tightens, so no row that can be the nearest is missed), then their values.
            for (std::size_t j0 = 0; j0 < nb; j0 += kChunk) {
                const std::size_t j1 = std::min(nb, j0 + kChunk);
                const std::size_t count = detail::panel_scan_bf16(
                    qbf.data(), packed_bf16_.data() + j0 * pairs, pairs, j1 - j0,
                    bf16_upper_.data() + j0, bf16_lower_.data() + j0, slack, minima, hit_rows,
                    hit_lanes);
                if (count == 0) continue;
                for (std::size_t r = 0; r < count; ++r)
                    row_ptr[r] = bank_.data() + (j0 + hit_rows[r]) * dim;
                rows_dots(qpack.data, row_ptr.data(), count, dim, row_dots.data());
                for (std::size_t r = 0; r < count; ++r) {
                    const auto j = static_cast<std::int64_t>(j0 + hit_rows[r]);
                    for (unsigned mask = hit_lanes[r]; mask != 0; mask &= mask - 1) {
                        const auto l = static_cast<std::size_t>(__builtin_ctz(mask));
                        detail::TopK{best_v + l, best_i + l, 1}.push(
                            norms_[static_cast<std::size_t>(j)] - 2.0f * row_dots[r * kPanel + l],
                            j);
                    }
                }
            }
            for (std::size_t l = 0; l < lanes; ++l) {
                const std::size_t q = row0 + l;
                require(best_i[l] != std::numeric_limits<std::int64_t>::max(),
                        "kNN bf16 pass kept no row for a query (internal error)");
                detail::finish_row(qn[q], best_v + l, best_i + l, 1, distances + q, indices + q);
            }
        }
    });
    return true;
}

// Queries for search_panels: `count` rows, their projections and squared norms, and the query
// each row is (nullptr: the row number).
struct KnnIndex::PanelSource {
    const float* rows;         // count x dim
    const float* projected;    // count x prefix
    const float* qn;           // squared norms
    const float* pqn;          // squared norms of the projections
    const std::uint32_t* ids;  // output row of each (nullptr: the same row)
    std::size_t count;
};

// One pass of the pruned search over panels of 16 consecutive rows of `src` (the rows of an
// image's patch grid in raster order: neighbours are alike, so their panel's tiles and rows
// overlap). With `hard`, a query that keeps more than half the bank's tiles in reach after the
// nearest ones (an anomalous patch) leaves its panel, whose other queries would otherwise pay
// for its search: its row goes to `hard` and its result is not written.
void KnnIndex::search_panels(const PanelSource& src, std::size_t k, float* distances,
                             std::int64_t* indices, const KernelOptions& options,
                             std::vector<std::uint32_t>* hard) const {
    const detail::KnnKernels kernels = detail::knn_kernels(options.isa);
    const detail::PanelDots dots = kernels.dots;
    const detail::PanelRowsDots rows_dots = kernels.rows_dots;
    const detail::BoundRows bound_rows = kernels.bound_rows;
    const detail::BoxBounds box_bounds = kernels.box_bounds;
    const int threads = options.threads;
    const std::size_t dim = dim_, m = prefix_, nb = nb_;
    const std::size_t tiles = (nb + kTileRows - 1) / kTileRows;
    const float* pnorms = bound_norms_.data();
    // The tile test, in exact arithmetic: a row b of a tile can be nearer than the k-th nearest
    // found so far (squared distance D, as computed) only if the distance from the query's
    // exact projection to the tile's box is at most sqrt(D'), D' = (D + the computed full
    // value's round-off) times the basis' stretch. The float projection of the query is off by
    // at most `shift` = sqrt(m) (dim + 2) eps |q| |u| (the box distance moves by no more than
    // the point does), and the box distance's own float sum by (m + 4) eps of itself: a tile is
    // out of reach when its computed box distance exceeds (sqrt(D') + shift)^2, so widened.
    const double stretch = (1.0 + static_cast<double>(m) * basis_error_) * (1.0 + 4.0 * kEps);
    const double shift_rate = std::sqrt(static_cast<double>(m)) *
                              (static_cast<double>(dim) + 2.0) * kEps *
                              std::sqrt(1.0 + basis_error_);
    const double sum_error = 1.0 / (1.0 - (static_cast<double>(m) + 4.0) * kEps);
    const double value_error = 4.0 * static_cast<double>(dim) * kEps;

    const std::size_t panels = (src.count + kPanel - 1) / kPanel;
    std::mutex hard_lock;
    // Panels are handed out a few at a time, not split in halves: a defect makes the panels of
    // its image rows slow, and with a static split one thread would get all of them.
    const std::size_t workers = static_cast<std::size_t>(std::max(1, resolve_threads(threads)));
    const std::size_t grain = std::max<std::size_t>(1, panels / (8 * workers));
    pool::parallel_for_dynamic(panels, threads, grain, [&](std::size_t p0, std::size_t p1) {
        std::vector<std::uint32_t> evicted_rows;
        std::vector<std::uint16_t> masks(tiles);    // per kept tile: the lanes it is in reach of
        detail::AlignedFloats ppack(kPanel * m);    // projected panel, column by column
        detail::AlignedFloats qpack(kPanel * dim);  // the panel itself, column by column
        std::vector<float> reach(tiles * kPanel);   // squared distances to the tiles' boxes
        std::vector<float> nearest(tiles);           // per tile: the smallest of its 16
        std::vector<std::pair<float, std::uint32_t>> visit(tiles);
        alignas(64) float block[kTileRows * kPanel];  // projected dots of one tile's rows
        std::vector<float> heap_v(kPanel * k);
        std::vector<std::int64_t> heap_i(kPanel * k);
        // Rows waiting for their full values (at most kFlush - 1 + one tile).
        const std::size_t max_rows = std::max(kFlush + kTileRows, kChunk);
        std::vector<const float*> row_ptr(max_rows);
        std::vector<std::uint32_t> pending(max_rows);
        std::vector<std::uint16_t> pending_lanes(max_rows);
        std::vector<float> row_dots(max_rows * kPanel);  // 16 dot products per bank row
        std::uint32_t hit_rows[kTileRows];
        std::uint16_t hit_lanes[kTileRows];
        alignas(64) float thr[kPanel];
        float slack[kPanel], limit[kPanel];
        for (std::size_t p = p0; p < p1; ++p) {
            const std::size_t row0 = p * kPanel;
            const std::size_t lanes = std::min(kPanel, src.count - row0);
            detail::pack_panel(src.projected, row0, lanes, m, ppack.data);
            detail::pack_panel(src.rows, row0, lanes, dim, qpack.data);
            auto heap = [&](std::size_t l) {
                return detail::TopK{heap_v.data() + l * k, heap_i.data() + l * k, k};
            };
            // Until a lane holds k rows every row passes its bound (thr = +Inf) and every tile
            // is in its reach (limit = +Inf). Lanes the bound cannot serve (their projection
            // overflows) and padding lanes never pass (-Inf); the former are searched in full
            // at the end.
            bool exhaustive[kPanel] = {};
            for (std::size_t l = 0; l < kPanel; ++l) {
                heap(l).reset();
                thr[l] = limit[l] = l < lanes ? kInf : -kInf;
                if (l >= lanes) continue;
                const float qn_l = src.qn[row0 + l];
                slack[l] = qn_l - src.pqn[row0 + l] + margin_rate_ * qn_l;
                if (!std::isfinite(slack[l])) {
                    exhaustive[l] = true;
                    thr[l] = limit[l] = -kInf;
                }
            }
            // The box distance beyond which a lane needs no row of a tile, once its k-th
            // nearest so far has the value kth (|b|^2 - 2 q.b).
            auto set_limit = [&](std::size_t l, float kth) {
                const double q = src.qn[row0 + l];
                const double reachable = std::max(
                    0.0, (static_cast<double>(kth) + q + value_error * (q + max_norm_)) * stretch);
                const double r = std::sqrt(reachable) + shift_rate * std::sqrt(q);
                limit[l] = float_above(r * r * sum_error * (1.0 + 8.0 * kEps));
            };
            // Full values for the pending rows; each lane's bounds follow its k-th nearest.
            std::size_t waiting = 0;
            auto flush = [&] {
                for (std::size_t r = 0; r < waiting; ++r)
                    row_ptr[r] = bank_.data() + std::size_t{pending[r]} * dim;
                rows_dots(qpack.data, row_ptr.data(), waiting, dim, row_dots.data());
                unsigned changed = 0;
                for (std::size_t r = 0; r < waiting; ++r) {
                    const std::size_t j = pending[r];
                    for (unsigned mask = pending_lanes[r]; mask != 0; mask &= mask - 1) {
                        const auto l = static_cast<std::size_t>(__builtin_ctz(mask));
                        auto h = heap(l);
                        h.push(norms_[j] - 2.0f * row_dots[r * kPanel + l],
                               static_cast<std::int64_t>(j));
                        if (h.full()) changed |= 1u << l;
                    }
                }
                for (unsigned mask = changed; mask != 0; mask &= mask - 1) {
                    const auto l = static_cast<std::size_t>(__builtin_ctz(mask));
                    const float kth = heap(l).threshold();
                    thr[l] = kth + slack[l];
                    set_limit(l, kth);
                }
                waiting = 0;
            };
            // Tiles nearest the panel first (by the smallest box distance of any of its
            // queries), so that the bounds tighten early: the kHead nearest in order, then the
            // ones still in reach after them, sorted.
            box_bounds(ppack.data, boxes_.data(), tiles, m, reach.data(), nearest.data());
            for (std::size_t t = 0; t < tiles; ++t)
                visit[t] = {nearest[t], static_cast<std::uint32_t>(t)};
            const std::size_t head = std::min(tiles, kHead);
            std::partial_sort(visit.begin(), visit.begin() + static_cast<std::ptrdiff_t>(head),
                              visit.end());
            auto lanes_in_reach = [&](std::uint32_t t) {
                const float* r = reach.data() + std::size_t{t} * kPanel;
                unsigned lanes_mask = 0;
                for (std::size_t l = 0; l < kPanel; ++l)
                    lanes_mask |= static_cast<unsigned>(r[l] <= limit[l]) << l;
                return lanes_mask;
            };
            auto scan = [&](std::size_t v0, std::size_t v1) {
                for (std::size_t v = v0; v < v1; ++v) {
                    const std::uint32_t t = visit[v].second;
                    if (lanes_in_reach(t) == 0) continue;
                    // The rows of the tile whose bound |Ub|^2 - 2 Uq.Ub passes some lane's
                    // threshold: a row can beat the k-th nearest only if it is at most
                    // (k-th value) + |q|^2 - |Uq|^2.
                    const std::size_t j0 = std::size_t{t} * kTileRows;
                    const std::size_t rows = std::min(nb, j0 + kTileRows) - j0;
                    dots(ppack.data, packed_prefix_.data() + j0 * m, m, rows, block, false,
                         nullptr, nullptr, nullptr);
                    const std::size_t count =
                        bound_rows(block, pnorms + j0, rows, thr, hit_rows, hit_lanes);
                    for (std::size_t i = 0; i < count; ++i) {
                        pending[waiting] = order_[j0 + hit_rows[i]];
                        pending_lanes[waiting++] = hit_lanes[i];
                    }
                    if (waiting >= kFlush) flush();
                }
            };
            scan(0, head);
            flush();
            std::size_t rest = head;
            std::size_t kept_by[kPanel] = {};
            for (std::size_t v = head; v < tiles; ++v) {
                const unsigned mask = lanes_in_reach(visit[v].second);
                if (mask == 0) continue;
                masks[rest] = static_cast<std::uint16_t>(mask);
                visit[rest++] = visit[v];
                for (unsigned b = mask; b != 0; b &= b - 1) ++kept_by[__builtin_ctz(b)];
            }
            unsigned evicted = 0;
            if (hard != nullptr && tiles >= 4 * kHead) {
                for (std::size_t l = 0; l < lanes; ++l)
                    if (!exhaustive[l] && 2 * kept_by[l] > tiles) evicted |= 1u << l;
                // A panel most of whose queries are hard is a hard panel already.
                if (static_cast<std::size_t>(__builtin_popcount(evicted)) > kPanel / 2)
                    evicted = 0;
            }
            if (evicted != 0) {
                for (unsigned b = evicted; b != 0; b &= b - 1) {
                    const auto l = static_cast<std::size_t>(__builtin_ctz(b));
                    thr[l] = limit[l] = -kInf;
                    evicted_rows.push_back(static_cast<std::uint32_t>(row0 + l));
                }
                std::size_t still = head;
                for (std::size_t v = head; v < rest; ++v)
                    if ((masks[v] & ~evicted) != 0) visit[still++] = visit[v];
                rest = still;
            }
            std::sort(visit.begin() + static_cast<std::ptrdiff_t>(head),
                      visit.begin() + static_cast<std::ptrdiff_t>(rest));
            scan(head, rest);
            flush();
            for (std::size_t l = 0; l < lanes; ++l) {
                if ((evicted >> l) & 1u) continue;
                auto h = heap(l);
                const std::size_t q = src.ids ? src.ids[row0 + l] : row0 + l;
                if (exhaustive[l] || !h.full()) {
                    // No bound for this query, or round-off beyond the margin kept a row out:
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
                detail::finish_row(src.qn[row0 + l], h.value, h.index, k, distances + q * k,
                                   indices + q * k);
            }
        }
        if (!evicted_rows.empty()) {
            std::lock_guard<std::mutex> guard(hard_lock);
            hard->insert(hard->end(), evicted_rows.begin(), evicted_rows.end());
        }
    });
}

void KnnIndex::search_pruned(const float* queries, std::size_t nq, std::size_t k,
                             float* distances, std::int64_t* indices,
                             const KernelOptions& options) const {
    check_k(k, nb_);
    if (nq == 0) return;
    require_finite(queries, nq * dim_, "queries");
    const int threads = options.threads;
    const std::size_t dim = dim_, m = prefix_;
    std::vector<float> qn(nq);
    squared_norms(queries, nq, dim, qn.data(), threads);
    require_finite(qn.data(), nq, "queries (squared row norms overflow float32)");
    std::vector<float> projected(nq * m);  // the queries on the basis
    matmul_abt(queries, nq, basis_.data(), m, dim, projected.data(), options);
    std::vector<float> pqn(nq);
    squared_norms(projected.data(), nq, m, pqn.data(), threads);
    std::vector<std::uint32_t> hard;
    search_panels({queries, projected.data(), qn.data(), pqn.data(), nullptr, nq}, k, distances,
                  indices, options, &hard);
    if (hard.empty()) return;
    // The hard queries, in raster order, gathered into panels of their own.
    std::sort(hard.begin(), hard.end());
    const std::size_t nh = hard.size();
    std::vector<float> hq(nh * dim), hp(nh * m), hqn(nh), hpqn(nh);
    for (std::size_t i = 0; i < nh; ++i) {
        const std::size_t q = hard[i];
        std::copy_n(queries + q * dim, dim, hq.data() + i * dim);
        std::copy_n(projected.data() + q * m, m, hp.data() + i * m);
        hqn[i] = qn[q];
        hpqn[i] = pqn[q];
    }
    search_panels({hq.data(), hp.data(), hqn.data(), hpqn.data(), hard.data(), nh}, k, distances,
                  indices, options, nullptr);
}

}  // namespace autoweld
