// PatchCore image scoring with re-weighting, Platt calibration and probability fusion.
// Python-free; pointer + counts.
#pragma once

#include <cstddef>
#include <cstdint>

namespace autoweld {

// PatchCore's image score (paper eq. 7, as anomalib does it): p* = the patch with the largest
// nearest-neighbour distance distances[p, 0] (first on ties); s* = that distance; m* =
// indices[p*, 0]; N = neighbours[m*] (b bank rows, N_0 = m*); d_j = |embeddings[p*] - bank[N_j]|;
// returns (1 - softmax(d)_0) * s*. embeddings (patches x dim), distances / indices
// (patches x k), bank (bank_rows x dim), neighbours (bank_rows x b).
double patchcore_score(const float* embeddings, std::size_t patches, std::size_t dim,
                       const float* distances, const std::int64_t* indices, std::size_t k,
                       const float* bank, std::size_t bank_rows, const std::int64_t* neighbours,
                       std::size_t b);

// out[i] = 1 / (1 + exp(a * scores[i] + b)), without overflow for any finite input.
void platt(const double* scores, std::size_t n, double a, double b, double* out);

// out[r] = sum_j weights[j] * probabilities[r * m + j] for rows r; weights non-negative and
// summing to 1 within 1e-6; probabilities in [0, 1].
void fuse(const double* probabilities, std::size_t rows, std::size_t m, const double* weights,
          double* out);

}  // namespace autoweld
