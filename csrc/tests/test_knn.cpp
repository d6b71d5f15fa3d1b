// kNN against a double-precision brute force, on both kernel paths, for shapes that are and are
// not multiples of the block sizes (16-query panels, 6-row bank tiles, 240-row blocks, 256-wide
// depth chunks); bad arguments throw std::invalid_argument.
#include <cstdio>
#include <string>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "common.hpp"
#include "knn.hpp"
#include "knn_kernels.hpp"

using autoweld::Isa;

static std::vector<float> random_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> m(rows * cols);
    for (auto& v : m) v = u(gen);
    return m;
}

static void check_against_brute_force(std::size_t nq, std::size_t nb, std::size_t dim,
                                      std::size_t k, Isa path, int threads) {
    auto q = random_matrix(nq, dim, 1 + static_cast<unsigned>(nq * 31 + dim));
    auto b = random_matrix(nb, dim, 2 + static_cast<unsigned>(nb * 17 + dim));
    std::vector<float> dist(nq * k);
    std::vector<std::int64_t> idx(nq * k);
    autoweld::knn_search(q.data(), nq, b.data(), nb, dim, k, dist.data(), idx.data(),
                         {threads, path});
    bool ok = true;
    std::vector<std::pair<double, std::int64_t>> ref(nb);
    for (std::size_t i = 0; i < nq; ++i) {
        for (std::size_t j = 0; j < nb; ++j) {
            double s = 0;
            for (std::size_t d = 0; d < dim; ++d) {
                double t = double(q[i * dim + d]) - b[j * dim + d];
                s += t * t;
            }
            ref[j] = {std::sqrt(s), static_cast<std::int64_t>(j)};
        }
        std::sort(ref.begin(), ref.end());
        for (std::size_t t = 0; t < k; ++t) {
            double tol = 1e-3 + 1e-4 * ref[t].first;
            if (std::fabs(dist[i * k + t] - ref[t].first) > tol) ok = false;
            // Indices must agree unless the reference has a near-tie at this rank.
            bool near_tie = (t + 1 < nb && ref[t + 1].first - ref[t].first < 1e-4) ||
                            (t > 0 && ref[t].first - ref[t - 1].first < 1e-4);
            if (!near_tie && idx[i * k + t] != ref[t].second) ok = false;
        }
        for (std::size_t t = 1; t < k; ++t)
            if (dist[i * k + t] < dist[i * k + t - 1]) ok = false;
    }
    if (!ok)
        std::fprintf(stderr, "mismatch at nq=%zu nb=%zu dim=%zu k=%zu path=%d\n", nq, nb, dim, k,
                     int(path));
    CHECK(ok);
}

int main() {
    std::vector<Isa> paths{Isa::portable};
    if (autoweld::isa_available(Isa::avx2)) paths.push_back(Isa::avx2);
    if (autoweld::isa_available(Isa::avx512)) paths.push_back(Isa::avx512);
    std::printf("kNN paths tested: %zu (avx512 %s)\n", paths.size(),
                autoweld::isa_available(Isa::avx512) ? "yes" : "no on this CPU");
    struct Shape { std::size_t nq, nb, dim, k; };
    const Shape shapes[] = {{1, 1, 1, 1},   {1, 7, 3, 7},      {5, 13, 8, 4},
                            {16, 6, 16, 6}, {17, 245, 9, 9},   {33, 250, 300, 16},
                            {40, 481, 257, 5}, {3, 20, 520, 1},
                            {1100, 50, 8, 3}};  // > 1024 queries: two query groups per thread
    for (Isa path : paths)
        for (const Shape& s : shapes)
            for (int threads : {1, 3}) check_against_brute_force(s.nq, s.nb, s.dim, s.k, path, threads);

    // Exact duplicates: equal distances list the lower index first.
    {
        std::vector<float> bank = {1, 1, 0, 0, 1, 1, 0, 0};  // rows 0,2 and 1,3 are equal
        std::vector<float> q = {0.9f, 0.9f};
        std::vector<float> d(4);
        std::vector<std::int64_t> i(4);
        for (Isa path : paths) {
            autoweld::knn_search(q.data(), 1, bank.data(), 4, 2, 4, d.data(), i.data(), {1, path});
            CHECK(i[0] == 0 && i[1] == 2 && i[2] == 1 && i[3] == 3);
        }
    }
    // KnnIndex gives the same answer as knn_search.
    {
        auto b = random_matrix(300, 40, 5);
        auto q = random_matrix(20, 40, 6);
        autoweld::KnnIndex index(b.data(), 300, 40, 2);
        CHECK(index.size() == 300 && index.dim() == 40);
        std::vector<float> d1(20 * 3), d2(20 * 3);
        std::vector<std::int64_t> i1(20 * 3), i2(20 * 3);
        index.search(q.data(), 20, 3, d1.data(), i1.data(), {2});
        autoweld::knn_search(q.data(), 20, b.data(), 300, 40, 3, d2.data(), i2.data(), {1});
        CHECK(i1 == i2 && d1 == d2);
        // Both forms own their copy of the bank: changing the caller's rows afterwards (here:
        // moving row 0 onto every query's neighbourhood) changes nothing.
        std::vector<float> basis(8 * 40, 0.0f);
        for (std::size_t p = 0; p < 8; ++p) basis[p * 40 + p] = 1.0f;
        autoweld::KnnIndex pruned(b.data(), 300, 40, basis.data(), 8, 2);
        pruned.search(q.data(), 20, 3, d2.data(), i2.data(), {2});
        CHECK(i1 == i2 && d1 == d2);
        std::fill(b.begin(), b.begin() + 40, 0.0f);
        std::fill(b.begin() + 40, b.end(), 1e6f);
        for (const autoweld::KnnIndex* owner : {&index, &pruned}) {
            std::fill(d2.begin(), d2.end(), -1.0f);
            owner->search(q.data(), 20, 3, d2.data(), i2.data(), {2});
            CHECK(i1 == i2 && d1 == d2);
            CHECK(owner->bank() != b.data() && owner->bank()[40] != 1e6f);
        }
    }
    // The brute-force index's k = 1 search (a bf16 first pass on CPUs with AVX-512 BF16, see
    // KnnIndex::search_bf16) is the FP32 brute force of the same ISA, to the bit: odd and deep
    // dimensions, exact duplicate rows (ties to the lower index), queries on rows and far away.
    std::printf("bf16 kNN pass: %s\n", autoweld::cpu_has_avx512_bf16() ? "yes" : "not on this CPU");
    for (Isa path : paths)
        for (std::size_t dim : {1, 3, 64, 301}) {
            const std::size_t nb = 500, nq = 40;
            auto b = random_matrix(nb, dim, 50 + static_cast<unsigned>(dim));
            for (std::size_t r = nb / 2; r < nb; ++r)  // the second half repeats the first
                std::copy_n(b.data() + (r - nb / 2) * dim, dim, b.data() + r * dim);
            auto q = random_matrix(nq, dim, 51 + static_cast<unsigned>(dim));
            std::copy_n(b.data() + 7 * dim, dim, q.data());  // on a row (and on its twin)
            for (std::size_t d = 0; d < dim; ++d) q[dim + d] *= 40.0f;  // far from the bank
            autoweld::KnnIndex index(b.data(), nb, dim, 2);
            std::vector<float> d1(nq), d2(nq);
            std::vector<std::int64_t> i1(nq), i2(nq);
            index.search(q.data(), nq, 1, d1.data(), i1.data(), {2, path});
            autoweld::knn_search(q.data(), nq, b.data(), nb, dim, 1, d2.data(), i2.data(),
                                 {1, path});
            CHECK(i1 == i2 && d1 == d2);
            CHECK(i1[0] == 7);
        }
    // matmul_abt against a direct product.
    for (Isa path : paths) {
        auto a = random_matrix(37, 300, 7);
        auto b = random_matrix(11, 300, 8);
        std::vector<float> c(37 * 11);
        autoweld::matmul_abt(a.data(), 37, b.data(), 11, 300, c.data(), {2, path});
        bool ok = true;
        for (std::size_t i = 0; i < 37; ++i)
            for (std::size_t j = 0; j < 11; ++j) {
                double s = 0;
                for (std::size_t d = 0; d < 300; ++d) s += double(a[i * 300 + d]) * b[j * 300 + d];
                ok = ok && std::fabs(s - c[i * 11 + j]) < 1e-3;
            }
        CHECK(ok);
    }
    // bank_neighbours: itself first.
    {
        std::vector<float> bank = {0, 0, 0, 0, 5, 5, 0.1f, 0};  // rows 0 and 1 duplicate
        std::vector<std::int64_t> nbrs(4 * 2);
        autoweld::bank_neighbours(bank.data(), 4, 2, 2, nbrs.data(), {1});
        CHECK(nbrs[0] == 0 && nbrs[1] == 1);
        CHECK(nbrs[2] == 1 && nbrs[3] == 0);
        CHECK(nbrs[4] == 2);
        CHECK(nbrs[6] == 3 && nbrs[7] == 0);
    }
    // Bad arguments.
    {
        std::vector<float> b(10, 1.0f), q(5, 1.0f), d(20);
        std::vector<std::int64_t> i(20);
        CHECK_THROWS(autoweld::knn_search(q.data(), 1, b.data(), 0, 5, 1, d.data(), i.data(), {1}), std::invalid_argument);
        CHECK_THROWS(autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 3, d.data(), i.data(), {1}), std::invalid_argument);
        CHECK_THROWS(autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 0, d.data(), i.data(), {1}), std::invalid_argument);
        q[2] = std::numeric_limits<float>::quiet_NaN();
        CHECK_THROWS(autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 1, d.data(), i.data(), {1}), std::invalid_argument);
        q[2] = 0;
        b[7] = std::numeric_limits<float>::infinity();
        CHECK_THROWS(autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 1, d.data(), i.data(), {1}), std::invalid_argument);
        CHECK_THROWS(autoweld::KnnIndex(b.data(), 2, 5, 1), std::invalid_argument);
        // The bank is checked through its norms first; the message still names the element.
        for (float bad : {std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()}) {
            b[7] = bad;
            std::string message;
            try {
                autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 1, d.data(), i.data(), {1});
            } catch (const std::invalid_argument& e) {
                message = e.what();
            }
            CHECK(message.find("bank contains NaN or Inf (at flat index 7)") != std::string::npos);
        }
        b[7] = 3e19f;  // finite, but its square overflows float32
        std::string overflow;
        try {
            autoweld::knn_search(q.data(), 1, b.data(), 2, 5, 1, d.data(), i.data(), {1});
        } catch (const std::invalid_argument& e) {
            overflow = e.what();
        }
        CHECK(overflow.find("overflow") != std::string::npos);
    }
    // Pruned KnnIndex: coordinate basis (orthonormal by construction) on features whose
    // variance falls off with the coordinate, as principal axes would order it; the answer is
    // the brute force's on every path, for shapes off the panel / tile / chunk sizes.
    for (Isa path : paths) {
        struct Pruned { std::size_t nq, nb, dim, prefix, k; };
        for (const Pruned& s : {Pruned{1, 1, 2, 1, 1}, Pruned{17, 245, 40, 8, 9},
                                Pruned{40, 1000, 152, 16, 1}, Pruned{5, 7, 9, 3, 7},
                                // deeper bases than the bundles' 16 axes
                                Pruned{30, 600, 64, 24, 2}, Pruned{40, 1000, 152, 40, 3}}) {
            auto b = random_matrix(s.nb, s.dim, 21 + static_cast<unsigned>(s.nb));
            auto q = random_matrix(s.nq, s.dim, 22 + static_cast<unsigned>(s.nq));
            for (std::size_t r = 0; r < s.nb; ++r)
                for (std::size_t d = 0; d < s.dim; ++d) b[r * s.dim + d] /= float(1 + d);
            for (std::size_t r = 0; r < s.nq; ++r)
                for (std::size_t d = 0; d < s.dim; ++d) q[r * s.dim + d] /= float(1 + d);
            std::vector<float> basis(s.prefix * s.dim, 0.0f);
            for (std::size_t p = 0; p < s.prefix; ++p) basis[p * s.dim + p] = 1.0f;
            autoweld::KnnIndex pruned(b.data(), s.nb, s.dim, basis.data(), s.prefix, 2);
            CHECK(pruned.prefix() == s.prefix);
            std::vector<float> d1(s.nq * s.k), d2(s.nq * s.k);
            std::vector<std::int64_t> i1(s.nq * s.k), i2(s.nq * s.k);
            pruned.search(q.data(), s.nq, s.k, d1.data(), i1.data(), {3, path});
            autoweld::knn_search(q.data(), s.nq, b.data(), s.nb, s.dim, s.k, d2.data(),
                                 i2.data(), {1, path});
            bool ok = true;
            for (std::size_t t = 0; t < s.nq * s.k; ++t) {
                ok = ok && std::fabs(d1[t] - d2[t]) <= 1e-4f * (1.0f + d2[t]);
                ok = ok && (i1[t] == i2[t] || std::fabs(d1[t] - d2[t]) <= 1e-4f);
            }
            if (!ok) std::fprintf(stderr, "pruned mismatch nq=%zu nb=%zu dim=%zu\n", s.nq, s.nb, s.dim);
            CHECK(ok);
        }
    }
    // Pruned KnnIndex on a bank of many tiles, with queries far from every row among normal
    // ones (they leave their panels and are searched apart): the brute force's answer to the
    // bit, on every path.
    for (Isa path : paths) {
        const std::size_t nb = 3000, dim = 32, prefix = 8, nq = 70, k = 3;
        auto b = random_matrix(nb, dim, 31);
        auto q = random_matrix(nq, dim, 32);
        for (std::size_t r = 0; r < nb; ++r)
            for (std::size_t d = 0; d < dim; ++d) b[r * dim + d] /= float(1 + d);
        for (std::size_t r = 0; r < nq; ++r)
            for (std::size_t d = 0; d < dim; ++d)
                q[r * dim + d] *= (r % 16 == 5 || r % 23 == 0 ? 20.0f : 1.0f) / float(1 + d);
        std::vector<float> basis(prefix * dim, 0.0f);
        for (std::size_t p = 0; p < prefix; ++p) basis[p * dim + p] = 1.0f;
        autoweld::KnnIndex pruned(b.data(), nb, dim, basis.data(), prefix, 2);
        std::vector<float> d1(nq * k), d2(nq * k);
        std::vector<std::int64_t> i1(nq * k), i2(nq * k);
        pruned.search(q.data(), nq, k, d1.data(), i1.data(), {2, path});
        autoweld::knn_search(q.data(), nq, b.data(), nb, dim, k, d2.data(), i2.data(),
                             {1, path});
        CHECK(d1 == d2 && i1 == i2);
    }
    // Pruned KnnIndex at the edge of float32: a bank whose projection overflows is refused (its
    // bound would be NaN), and a query whose projection overflows is searched in full.
    {
        const float c = 0.99998492f, s = 0.00549497223f;  // c*c + s*s == 1 in float
        const float r0 = 1.84464648e+19f, r1 = 1.01364338e+17f;  // |row|^2 finite, |Ub|^2 not
        std::vector<float> bank = {r0, r1, r0, r1}, basis = {c, s};
        CHECK_THROWS(autoweld::KnnIndex(bank.data(), 2, 2, basis.data(), 1, 1),
                     std::invalid_argument);
        std::vector<float> small = {1, 0, 2, 0, -1, 0, 0, 3};
        std::vector<float> stretched = {1.00004f, 0.0f};  // within the 1e-4 tolerance
        autoweld::KnnIndex index(small.data(), 4, 2, stretched.data(), 1, 1);
        std::vector<float> q = {1.8446742e19f, 0.0f, 1.8f, 0.1f};  // |Uq|^2 of the first: +Inf
        std::vector<float> d1(4), d2(4);
        std::vector<std::int64_t> i1(4), i2(4);
        for (Isa path : paths) {
            index.search(q.data(), 2, 2, d1.data(), i1.data(), {1, path});
            autoweld::knn_search(q.data(), 2, small.data(), 4, 2, 2, d2.data(), i2.data(),
                                 {1, path});
            CHECK(i1 == i2 && d1 == d2);
            // The huge query is equally far from every row in float (|q|^2 swamps the rest):
            // ties, lower index first. The other: (2, 0), then (1, 0).
            CHECK(i1[0] == 0 && i1[1] == 1 && i1[2] == 1 && i1[3] == 0);
        }
    }
    // The tile boxes' kernel: each flavour's squared distances from the 16 lanes of a panel to
    // each box are the definition's (computed here in double) up to float round-off, zero for
    // a lane inside a box, and `nearest` is the smallest of each box's 16.
    {
        using BoxFn = void (*)(const float*, const float*, std::size_t, std::size_t, float*,
                               float*);
        std::vector<std::pair<Isa, BoxFn>> flavours{{Isa::portable, autoweld::detail::box_bounds_portable}};
        if (autoweld::isa_available(Isa::avx2))
            flavours.emplace_back(Isa::avx2, autoweld::detail::box_bounds_avx2);
        if (autoweld::isa_available(Isa::avx512))
            flavours.emplace_back(Isa::avx512, autoweld::detail::box_bounds_avx512);
        for (std::size_t m : {1, 2, 7, 16, 33}) {
            const std::size_t boxes = 9;
            auto x = random_matrix(m, 16, 40 + static_cast<unsigned>(m));  // ppack[m][16]
            auto corners = random_matrix(boxes * 2, m, 41 + static_cast<unsigned>(m));
            std::vector<float> box(boxes * 2 * m);
            for (std::size_t t = 0; t < boxes; ++t)
                for (std::size_t d = 0; d < m; ++d) {
                    const float a = corners[(2 * t) * m + d], c = corners[(2 * t + 1) * m + d];
                    box[t * 2 * m + d] = std::min(a, c) * (t == 0 ? 4.0f : 1.0f);
                    box[t * 2 * m + m + d] = std::max(a, c) * (t == 0 ? 4.0f : 1.0f);
                }
            // Lane 3 sits inside box 0 (the widened one): distance 0 there.
            for (std::size_t d = 0; d < m; ++d)
                x[d * 16 + 3] = 0.5f * (box[d] + box[m + d]);
            for (const auto& [isa, fn] : flavours) {
                std::vector<float> out(boxes * 16), nearest(boxes);
                fn(x.data(), box.data(), boxes, m, out.data(), nearest.data());
                bool ok = out[3] == 0.0f;
                for (std::size_t t = 0; t < boxes; ++t) {
                    float low = out[t * 16];
                    for (std::size_t l = 0; l < 16; ++l) {
                        double ref = 0;
                        for (std::size_t d = 0; d < m; ++d) {
                            const double v = x[d * 16 + l], lo = box[t * 2 * m + d],
                                         hi = box[t * 2 * m + m + d];
                            const double g = std::max({lo - v, v - hi, 0.0});
                            ref += g * g;
                        }
                        ok = ok && std::fabs(out[t * 16 + l] - ref) <= 1e-5 * (1.0 + ref);
                        low = std::min(low, out[t * 16 + l]);
                    }
                    ok = ok && nearest[t] == low;
                }
                if (!ok) std::fprintf(stderr, "box bounds mismatch m=%zu isa=%d\n", m, int(isa));
                CHECK(ok);
            }
        }
    }
    // Pruned KnnIndex: bad bases and prefixes.
    {
        auto b = random_matrix(30, 4, 3);
        std::vector<float> skewed = {1, 0, 0, 0, 0.5f, 1, 0, 0};  // rows not orthogonal
        std::vector<float> unit = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
        CHECK_THROWS(autoweld::KnnIndex(b.data(), 30, 4, skewed.data(), 2, 1), std::invalid_argument);
        CHECK_THROWS(autoweld::KnnIndex(b.data(), 30, 4, unit.data(), 0, 1), std::invalid_argument);
        CHECK_THROWS(autoweld::KnnIndex(b.data(), 30, 4, unit.data(), 4, 1), std::invalid_argument);
        autoweld::KnnIndex ok(b.data(), 30, 4, unit.data(), 3, 1);
        std::vector<float> q(4, 0.0f), d(31);
        std::vector<std::int64_t> i(31);
        CHECK_THROWS(ok.search(q.data(), 1, 31, d.data(), i.data(), {1}), std::invalid_argument);
        q[1] = std::numeric_limits<float>::quiet_NaN();
        CHECK_THROWS(ok.search(q.data(), 1, 1, d.data(), i.data(), {1}), std::invalid_argument);
    }
    return autoweld_test::finish("test_knn");
}
