// Scoring: PatchCore re-weighting by hand on a tiny case, Platt without overflow, fusion.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "scoring.hpp"

int main() {
    // Bank of 3 rows in 1-D: 0, 1, 3. Patches at 0.5 and 2.5 (nearest: row 1 at 0.5, row 2).
    std::vector<float> bank = {0.0f, 1.0f, 3.0f};
    std::vector<float> emb = {0.5f, 2.0f};
    std::vector<float> dist = {0.5f, 1.0f};  // distance to nearest bank row per patch
    std::vector<std::int64_t> idx = {0, 1};  // nearest rows
    std::vector<std::int64_t> nbrs = {0, 1, 1, 0, 2, 1};  // b = 2
    double s = autoweld::patchcore_score(emb.data(), 2, 1, dist.data(), idx.data(), 1,
                                         bank.data(), 3, nbrs.data(), 2);
    // p* = 1 (distance 1.0), m* = 1, support rows {1, 0}: d = {1.0, 2.0}.
    double w = 1.0 - std::exp(1.0) / (std::exp(1.0) + std::exp(2.0));
    CHECK_NEAR(s, w * 1.0, 1e-12);
    std::vector<std::int64_t> bad_idx = {0, 7};
    CHECK_THROWS(autoweld::patchcore_score(emb.data(), 2, 1, dist.data(), bad_idx.data(), 1,
                                           bank.data(), 3, nbrs.data(), 2), std::invalid_argument);
    std::vector<std::int64_t> bad_nbrs = {0, 1, 1, -1, 2, 1};
    CHECK_THROWS(autoweld::patchcore_score(emb.data(), 2, 1, dist.data(), idx.data(), 1,
                                           bank.data(), 3, bad_nbrs.data(), 2), std::invalid_argument);

    std::vector<double> scores = {-1e308, -800.0, 0.0, 2.0, 800.0, 1e308};
    std::vector<double> p(scores.size());
    autoweld::platt(scores.data(), scores.size(), 1.5, -0.5, p.data());
    bool finite = true;
    for (double v : p) finite = finite && std::isfinite(v) && v >= 0.0 && v <= 1.0;
    CHECK(finite);
    CHECK_NEAR(p[2], 1.0 / (1.0 + std::exp(-0.5)), 1e-15);
    CHECK_NEAR(p[3], 1.0 / (1.0 + std::exp(2.5)), 1e-15);
    CHECK(p[0] == 1.0 && p[5] == 0.0);
    scores[1] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS(autoweld::platt(scores.data(), scores.size(), 1.0, 0.0, p.data()), std::invalid_argument);

    std::vector<double> probs = {0.2, 0.8, 1.0, 0.0};
    std::vector<double> weights = {0.25, 0.75};
    std::vector<double> fused(2);
    autoweld::fuse(probs.data(), 2, 2, weights.data(), fused.data());
    CHECK_NEAR(fused[0], 0.65, 1e-15);
    CHECK_NEAR(fused[1], 0.25, 1e-15);
    std::vector<double> bad_w = {0.5, 0.6};
    CHECK_THROWS(autoweld::fuse(probs.data(), 2, 2, bad_w.data(), fused.data()), std::invalid_argument);
    std::vector<double> neg_w = {1.5, -0.5};
    CHECK_THROWS(autoweld::fuse(probs.data(), 2, 2, neg_w.data(), fused.data()), std::invalid_argument);
    probs[0] = 1.5;
    CHECK_THROWS(autoweld::fuse(probs.data(), 2, 2, weights.data(), fused.data()), std::invalid_argument);
    return autoweld_test::finish("test_scoring");
}
