// The anomaly map's blur kernel, one per instruction set (anomaly_map.cpp picks one at run time).
#pragma once

#include <cstddef>

namespace autoweld {

// dst[x] = 0 + kernel[0] * rows[0][x] + kernel[1] * rows[1][x] + ... (taps added in order, each
// a multiply then an add, never fused), for x < width. Every variant gives the same bits.
void weighted_rows_portable(const float* kernel, std::size_t taps, const float* const* rows,
                            int width, float* dst);
void weighted_rows_avx2(const float* kernel, std::size_t taps, const float* const* rows,
                        int width, float* dst);

}  // namespace autoweld
