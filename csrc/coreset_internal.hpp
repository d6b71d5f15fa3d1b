// The coreset selection's update kernel, one per instruction set (coreset.cpp: portable;
// coreset_avx2.cpp). Internal to the core; declarations only, so that the ISA files may
// include it.
#pragma once

#include <cstddef>

namespace autoweld::detail {

// Squared distances of rows [begin, end) of x (n x dim, norms xn) to the centre c (norm cn),
// merged into min_dist (entries < 0 mark selected points and are left alone). Returns the
// first index of the largest min_dist in the range (or `end` when every entry is selected),
// and that value in best_value.
std::size_t coreset_update_portable(const float* x, const float* xn, std::size_t dim,
                                    std::size_t begin, std::size_t end, const float* c, float cn,
                                    float* min_dist, float* best_value);
std::size_t coreset_update_avx2(const float* x, const float* xn, std::size_t dim,
                                std::size_t begin, std::size_t end, const float* c, float cn,
                                float* min_dist, float* best_value);

}  // namespace autoweld::detail
