// PatchCore's approximate greedy k-center coreset selection. Python-free.
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.hpp"

namespace autoweld {

// The seeded Gaussian projection matrix, (dim x projection_dim) row-major: entry
// (d, p) is the (d * projection_dim + p)-th N(0, 1) draw of splitmix64 + Box-Muller, scaled by
// 1/sqrt(projection_dim). Identical on every platform and standard library.
void coreset_projection(std::size_t dim, std::size_t projection_dim, std::uint64_t seed,
                        float* out);

// True when coreset() projects features of this dimension (dim > projection_dim > 0).
inline bool coreset_projects(std::size_t dim, std::size_t projection_dim) {
    return projection_dim > 0 && dim > projection_dim;
}

// features (n x dim) @ coreset_projection(...) into out (n x projection_dim).
void coreset_project(const float* features, std::size_t n, std::size_t dim,
                     std::size_t projection_dim, std::uint64_t seed, float* out, int threads);

// Indices (count of them, distinct) chosen by greedy farthest-point selection on the projected
// features (or the features themselves when not projected): the first is a seeded random row,
// each next one the row farthest (squared Euclidean, lowest index on ties) from those already
// chosen. count == n returns 0..n-1. Memory: the projected features plus O(n).
void coreset(const float* features, std::size_t n, std::size_t dim, std::size_t count,
             std::size_t projection_dim, std::uint64_t seed, std::int64_t* out, int threads);

// The greedy selection itself on already projected rows x (n x dim), from a given start row
// (exposed so that tests run every ISA's update kernel: options.isa caps it).
void coreset_select(const float* x, std::size_t n, std::size_t dim, std::size_t count,
                    std::size_t start, std::int64_t* out, const KernelOptions& options = {});

}  // namespace autoweld
