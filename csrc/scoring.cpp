#include "scoring.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"

namespace autoweld {

double patchcore_score(const float* embeddings, std::size_t patches, std::size_t dim,
                       const float* distances, const std::int64_t* indices, std::size_t k,
                       const float* bank, std::size_t bank_rows, const std::int64_t* neighbours,
                       std::size_t b) {
    require(patches >= 1, "embeddings: no patches");
    require(dim >= 1, "embeddings: feature dimension must be at least 1");
    require(k >= 1, "distances: needs at least one column");
    require(bank_rows >= 1, "bank: memory bank is empty");
    require(b >= 1, "bank_neighbours: needs at least one column");
    std::size_t best = 0;
    for (std::size_t p = 0; p < patches; ++p) {
        const float d = distances[p * k];
        require(std::isfinite(d) && d >= 0.0f,
                "distances must be finite and non-negative (row " + std::to_string(p) + ")");
        if (d > distances[best * k]) best = p;
    }
    const double s_star = distances[best * k];
    const std::int64_t m_star = indices[best * k];
    require(m_star >= 0 && static_cast<std::size_t>(m_star) < bank_rows,
            "indices: entry " + std::to_string(m_star) + " is outside the bank (" +
                std::to_string(bank_rows) + " rows)");
    const std::int64_t* support = neighbours + static_cast<std::size_t>(m_star) * b;
    const float* e = embeddings + best * dim;
    std::vector<double> d(b);
    for (std::size_t j = 0; j < b; ++j) {
        require(support[j] >= 0 && static_cast<std::size_t>(support[j]) < bank_rows,
                "bank_neighbours: entry " + std::to_string(support[j]) +
                    " is outside the bank (" + std::to_string(bank_rows) + " rows)");
        const float* r = bank + static_cast<std::size_t>(support[j]) * dim;
        double s = 0.0;
        for (std::size_t t = 0; t < dim; ++t) {
            const double diff = static_cast<double>(e[t]) - r[t];
            s += diff * diff;
        }
        d[j] = std::sqrt(s);
    }
    require(std::all_of(d.begin(), d.end(), [](double v) { return std::isfinite(v); }),
            "embeddings or bank contain NaN or Inf");
    const double top = *std::max_element(d.begin(), d.end());
    double total = 0.0;
    for (double v : d) total += std::exp(v - top);
    const double weight = 1.0 - std::exp(d[0] - top) / total;
    return weight * s_star;
}

void platt(const double* scores, std::size_t n, double a, double b, double* out) {
    require(std::isfinite(a), "a must be finite");
    require(std::isfinite(b), "b must be finite");
    for (std::size_t i = 0; i < n; ++i)
        require(std::isfinite(scores[i]), "scores contains NaN or Inf (at index " +
                                              std::to_string(i) + ")");
    for (std::size_t i = 0; i < n; ++i) {
        const double z = a * scores[i] + b;
        if (z >= 0.0) {
            const double e = std::exp(-z);  // in (0, 1]: no overflow
            out[i] = e / (1.0 + e);
        } else {
            out[i] = 1.0 / (1.0 + std::exp(z));
        }
    }
}

void fuse(const double* probabilities, std::size_t rows, std::size_t m, const double* weights,
          double* out) {
    require(m >= 1, "weights: needs at least one weight");
    double total = 0.0;
    for (std::size_t j = 0; j < m; ++j) {
        require(std::isfinite(weights[j]) && weights[j] >= 0.0,
                "weights must be finite and non-negative");
        total += weights[j];
    }
    require(std::fabs(total - 1.0) <= 1e-6,
            "weights must sum to 1 (within 1e-6), got " + std::to_string(total));
    for (std::size_t i = 0; i < rows * m; ++i)
        require(probabilities[i] >= 0.0 && probabilities[i] <= 1.0,
                "probabilities must lie in [0, 1] (flat index " + std::to_string(i) + ")");
    for (std::size_t r = 0; r < rows; ++r) {
        double s = 0.0;
        for (std::size_t j = 0; j < m; ++j) s += weights[j] * probabilities[r * m + j];
        out[r] = s;
    }
}

}  // namespace autoweld
