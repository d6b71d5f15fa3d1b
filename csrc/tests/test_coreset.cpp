// Coreset: deterministic for a seed, distinct indices, first index seeded, the greedy rule
// (each pick is the farthest point from those before it) holds, both kernel paths agree.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "coreset.hpp"
#include "knn.hpp"

static std::vector<float> random_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> m(rows * cols);
    for (auto& v : m) v = g(gen);
    return m;
}

// Straightforward greedy in double precision.
static std::vector<std::int64_t> reference(const std::vector<float>& x, std::size_t n,
                                           std::size_t dim, std::size_t count, std::size_t start) {
    std::vector<double> mind(n, std::numeric_limits<double>::infinity());
    std::vector<std::int64_t> out{static_cast<std::int64_t>(start)};
    std::size_t c = start;
    std::vector<bool> taken(n, false);
    taken[c] = true;
    while (out.size() < count) {
        std::size_t best = n;
        double bv = -1;
        for (std::size_t i = 0; i < n; ++i) {
            double s = 0;
            for (std::size_t d = 0; d < dim; ++d) {
                double t = double(x[i * dim + d]) - x[c * dim + d];
                s += t * t;
            }
            mind[i] = std::min(mind[i], s);
            if (!taken[i] && mind[i] > bv) { bv = mind[i]; best = i; }
        }
        c = best;
        taken[c] = true;
        out.push_back(static_cast<std::int64_t>(c));
    }
    return out;
}

int main() {
    using autoweld::Isa;
    const std::size_t n = 20000, dim = 40;  // > 8192 rows: several workers
    auto x = random_matrix(n, dim, 3);
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
        if (!autoweld::isa_available(isa)) continue;
        for (int threads : {1, 3}) {
            std::vector<std::int64_t> got(30);
            autoweld::coreset_select(x.data(), n, dim, 30, 17, got.data(), {threads, isa});
            auto ref = reference(x, n, dim, 30, 17);
            CHECK(got == ref);
        }
    }
    // Projected coreset: deterministic, distinct, seed changes the result.
    auto f = random_matrix(3000, 200, 4);
    std::vector<std::int64_t> a(300), b(300), c(300);
    autoweld::coreset(f.data(), 3000, 200, 300, 64, 7, a.data(), 2);
    autoweld::coreset(f.data(), 3000, 200, 300, 64, 7, b.data(), 1);
    autoweld::coreset(f.data(), 3000, 200, 300, 64, 8, c.data(), 2);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(std::set<std::int64_t>(a.begin(), a.end()).size() == 300);
    CHECK(std::all_of(a.begin(), a.end(), [](std::int64_t i) { return i >= 0 && i < 3000; }));
    // Duplicate rows: still distinct indices when count exceeds the number of distinct points.
    std::vector<float> dup(50 * 4, 1.0f);
    for (std::size_t i = 0; i < 5; ++i) dup[i * 4] = float(i);
    std::vector<std::int64_t> d(40);
    autoweld::coreset(dup.data(), 50, 4, 40, 0, 1, d.data(), 1);
    CHECK(std::set<std::int64_t>(d.begin(), d.end()).size() == 40);
    // n == N returns everything.
    std::vector<std::int64_t> all(50);
    autoweld::coreset(dup.data(), 50, 4, 50, 0, 1, all.data(), 1);
    CHECK(all[0] == 0 && all[49] == 49);
    // Projection matrix: deterministic, roughly N(0, 1/p).
    std::vector<float> p1(100 * 50), p2(100 * 50);
    autoweld::coreset_projection(100, 50, 9, p1.data());
    autoweld::coreset_projection(100, 50, 9, p2.data());
    CHECK(p1 == p2);
    double mean = 0, var = 0;
    for (float v : p1) mean += v;
    mean /= p1.size();
    for (float v : p1) var += (v - mean) * (v - mean);
    var /= p1.size();
    CHECK(std::fabs(mean) < 0.01);
    CHECK_NEAR(var * 50, 1.0, 0.1);
    // Bad arguments.
    CHECK_THROWS(autoweld::coreset(f.data(), 3000, 200, 0, 64, 7, a.data(), 1), std::invalid_argument);
    CHECK_THROWS(autoweld::coreset(f.data(), 3000, 200, 3001, 64, 7, a.data(), 1), std::invalid_argument);
    f[5] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS(autoweld::coreset(f.data(), 3000, 200, 10, 64, 7, a.data(), 1), std::invalid_argument);
    return autoweld_test::finish("test_coreset");
}
