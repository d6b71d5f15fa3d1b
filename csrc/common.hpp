// Shared plumbing of the AutoWeld core: argument errors, a small parallel-for and CPU feature
// detection. Python-free: nothing here knows pybind11.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace autoweld {

// A caller mistake (bad shape, bad value). The binding maps std::invalid_argument to ValueError.
inline void require(bool condition, const std::string& message) {
    if (!condition) throw std::invalid_argument(message);
}

// Largest Gaussian sigma (pixels) any kernel accepts: beyond it the kernel radius int(4*sigma)
// would overflow int, and no image we inspect is that large anyway.
constexpr double kMaxSigma = 1000.0;

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

namespace detail {
// Starts a std::thread; parallel_for takes the spawner as a parameter so a test can make
// thread creation fail.
struct SpawnThread {
    template <class F, class... A>
    std::thread operator()(F&& f, A&&... a) const {
        return std::thread(std::forward<F>(f), std::forward<A>(a)...);
    }
};
}  // namespace detail

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to `threads` threads.
// The calling thread does one chunk itself. An exception thrown by any chunk is captured and
// the first one is rethrown after every thread has joined, so no thread is left running.
// If a thread cannot be created (std::system_error: the process is out of threads), the ones
// already started are still joined and the calling thread runs the chunks left over.
template <class Fn, class Spawn = detail::SpawnThread>
void parallel_for(std::size_t n, int threads, Fn&& fn, Spawn spawn = Spawn{}) {
    if (n == 0) return;
    std::size_t workers = static_cast<std::size_t>(std::max(1, resolve_threads(threads)));
    workers = std::min(workers, n);
    if (workers == 1) {
        fn(std::size_t{0}, n);
        return;
    }
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto run_chunk = [&](std::size_t begin, std::size_t end) {
        try {
            fn(begin, end);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
        }
    };
    const std::size_t chunk = (n + workers - 1) / workers;
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    std::size_t not_started = workers;  // first chunk index no thread was started for
    for (std::size_t w = 1; w < workers; ++w) {
        std::size_t begin = w * chunk;
        if (begin >= n) break;
        std::size_t end = std::min(n, begin + chunk);
        try {
            pool.push_back(spawn(run_chunk, begin, end));
        } catch (...) {
            not_started = w;
            break;
        }
    }
    run_chunk(0, std::min(n, chunk));
    for (std::size_t w = not_started; w < workers; ++w) {
        std::size_t begin = w * chunk;
        if (begin >= n) break;
        run_chunk(begin, std::min(n, begin + chunk));
    }
    for (auto& t : pool) t.join();
    if (first_error) std::rethrow_exception(first_error);
}

// True when the CPU running us has AVX2 and FMA (checked once). Kernels compiled in
// *_avx2.cpp files may only be called when this is true.
bool cpu_has_avx2_fma();

}  // namespace autoweld
