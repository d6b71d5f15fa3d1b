// Shared plumbing of the AutoWeld core: argument errors, thread counts, the reflect-101 border.
// Python-free: nothing here knows pybind11. (Parallel loops: thread_pool.hpp; CPU detection and
// kernel dispatch: isa.hpp.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <thread>

namespace autoweld {

// A caller mistake (bad shape, bad value). The binding maps std::invalid_argument to ValueError.
inline void require(bool condition, const std::string& message) {
    if (!condition) throw std::invalid_argument(message);
}

// Largest Gaussian sigma (pixels) any kernel accepts: beyond it the kernel radius int(4*sigma)
// would overflow int, and no image we inspect is that large anyway.
constexpr double kMaxSigma = 1000.0;

// Throws std::invalid_argument unless sigma is in [0, kMaxSigma].
inline void require_sigma(double sigma) {
    require(std::isfinite(sigma) && sigma >= 0.0, "sigma must be finite and >= 0");
    require(sigma <= kMaxSigma, "sigma must be <= 1000, got " + std::to_string(sigma));
}

// Number of worker threads to use: `requested` <= 0 means "all hardware threads".
inline int resolve_threads(int requested) {
    if (requested > 0) return requested;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// OpenCV's borderInterpolate for BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), which is also
// torch's 'reflect' padding; folded again when the pad is longer than the signal. The one
// definition shared by clahe, preprocess and the anomaly map.
inline int reflect101(int p, int len) {
    if (static_cast<unsigned>(p) < static_cast<unsigned>(len)) return p;
    if (len == 1) return 0;
    do {
        if (p < 0)
            p = -p;
        else
            p = 2 * len - 2 - p;
    } while (static_cast<unsigned>(p) >= static_cast<unsigned>(len));
    return p;
}

}  // namespace autoweld
