// The preprocessing filter kernels each instruction set implements (preprocess.cpp: scalar;
// preprocess_avx2.cpp, preprocess_avx512.cpp) and their dispatch. Internal to the core.
// Declarations only, so that the ISA files may include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.hpp"

namespace autoweld::detail {
// out[k] = sum_t weights[t] * rows[t][k] for k < n (uint8 rows, float weights).
void weighted_rows_scalar(const std::uint8_t* const* rows, const float* weights, int count,
                          std::size_t n, float* out);
void weighted_rows_avx2(const std::uint8_t* const* rows, const float* weights, int count,
                        std::size_t n, float* out);
void weighted_rows_avx512(const std::uint8_t* const* rows, const float* weights, int count,
                          std::size_t n, float* out);
// Horizontal filter of one float row: out[j] = sum_{t < stride} weights[j*stride + t] *
// row[first[j] + t] for j < count. `stride` is a multiple of 8 (weights zero padded), and
// row[first[j] .. first[j] + stride) must be readable and finite for every j.
void filter_columns_scalar(const float* row, const float* weights, int stride, const int* first,
                           int count, float* out);
void filter_columns_avx2(const float* row, const float* weights, int stride, const int* first,
                         int count, float* out);

// The filter kernel family, for pick_kernels (isa.hpp); no AVX-512 filter_columns (the AVX2
// one serves there).
struct FilterKernels {
    void (*weighted_rows)(const std::uint8_t* const* rows, const float* weights, int count,
                          std::size_t n, float* out);
    void (*filter_columns)(const float* row, const float* weights, int stride, const int* first,
                           int count, float* out);
};
FilterKernels filter_kernels(Isa cap);

}  // namespace autoweld::detail
