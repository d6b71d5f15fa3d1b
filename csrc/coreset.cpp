#include "coreset.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"
#include "coreset_internal.hpp"
#include "knn.hpp"
#include "thread_pool.hpp"

namespace autoweld {

namespace detail {

std::size_t coreset_update_portable(const float* x, const float* xn, std::size_t dim,
                                    std::size_t begin, std::size_t end, const float* c, float cn,
                                    float* min_dist, float* best_value) {
    std::size_t best = end;
    float best_v = -1.0f;
    for (std::size_t i = begin; i < end; ++i) {
        float m = min_dist[i];
        if (m < 0.0f) continue;  // already selected
        const float* xi = x + i * dim;
        float dot = 0.0f;
        for (std::size_t d = 0; d < dim; ++d) dot += xi[d] * c[d];
        const float dist = std::max(0.0f, xn[i] + cn - 2.0f * dot);
        if (dist < m) {
            m = dist;
            min_dist[i] = m;
        }
        if (m > best_v) {
            best_v = m;
            best = i;
        }
    }
    *best_value = best_v;
    return best;
}

}  // namespace detail

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform double in (0, 1] from the top 53 bits.
double unit_open(std::uint64_t& state) {
    return (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
}

// A spinning barrier for the few members of the selection loop's team (one crossing per
// iteration; waking sleeping threads per iteration would cost more than the iteration). The
// team runs on the pool (pool::run_team), whose members all run at the same time; `parties` is
// the team's actual size.
class SpinBarrier {
public:
    void arrive_and_wait(int parties) {
        const unsigned gen = generation_.load(std::memory_order_acquire);
        if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == parties) {
            waiting_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
            return;
        }
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == gen) {
            if (++spins > 256) std::this_thread::yield();
        }
    }

private:
    std::atomic<int> waiting_{0};
    std::atomic<unsigned> generation_{0};
};

}  // namespace

void coreset_projection(std::size_t dim, std::size_t projection_dim, std::uint64_t seed,
                        float* out) {
    std::uint64_t state = seed ^ 0x5EED0F1A7C0E5E75ull;
    const std::size_t total = dim * projection_dim;
    const double scale = 1.0 / std::sqrt(static_cast<double>(std::max<std::size_t>(1, projection_dim)));
    const double two_pi = 6.283185307179586476925286766559;
    for (std::size_t i = 0; i < total; i += 2) {
        const double r = std::sqrt(-2.0 * std::log(unit_open(state)));
        const double t = two_pi * unit_open(state);
        out[i] = static_cast<float>(r * std::cos(t) * scale);
        if (i + 1 < total) out[i + 1] = static_cast<float>(r * std::sin(t) * scale);
    }
}

void coreset_project(const float* features, std::size_t n, std::size_t dim,
                     std::size_t projection_dim, std::uint64_t seed, float* out, int threads) {
    require(projection_dim >= 1, "projection_dim must be at least 1");
    require(dim >= 1, "features: feature dimension must be at least 1");
    require_finite(features, n * dim, "features");
    std::vector<float> proj(dim * projection_dim);
    coreset_projection(dim, projection_dim, seed, proj.data());
    // matmul_abt wants the projection as rows: transpose to (projection_dim x dim).
    std::vector<float> proj_t(projection_dim * dim);
    for (std::size_t d = 0; d < dim; ++d)
        for (std::size_t p = 0; p < projection_dim; ++p)
            proj_t[p * dim + d] = proj[d * projection_dim + p];
    matmul_abt(features, n, proj_t.data(), projection_dim, dim, out, {threads});
}

void coreset_select(const float* x, std::size_t n, std::size_t dim, std::size_t count,
                    std::size_t start, std::int64_t* out, const KernelOptions& options) {
    require(n >= 1, "features: no rows");
    require(count >= 1 && count <= n, "n must be in [1, " + std::to_string(n) + "], got " +
                                          std::to_string(count));
    require(start < n, "start index out of range");
    // The update is a memory-bound dot product per row: the AVX2 kernel serves AVX-512 CPUs too.
    const auto update = pick_kernels(options.isa, &detail::coreset_update_portable,
                                     &detail::coreset_update_avx2, &detail::coreset_update_avx2);
    const int threads = options.threads;
    std::vector<float> xn(n);
    squared_norms(x, n, dim, xn.data(), threads);
    std::vector<float> min_dist(n, std::numeric_limits<float>::infinity());
    // Each worker owns a contiguous range; at least 8192 rows per worker, else the barrier
    // costs more than the work.
    const std::size_t workers = std::max<std::size_t>(
        1, std::min<std::size_t>(static_cast<std::size_t>(resolve_threads(threads)),
                                 n / 8192));
    std::vector<float> best_v(2 * workers);
    std::vector<std::size_t> best_i(2 * workers);
    SpinBarrier barrier;
    out[0] = static_cast<std::int64_t>(start);
    pool::run_team(workers, [&](std::size_t w, std::size_t team) {
        const std::size_t chunk = (n + team - 1) / team;
        const std::size_t begin = std::min(n, w * chunk);
        const std::size_t end = std::min(n, begin + chunk);
        std::size_t centre = start;
        for (std::size_t it = 1; it < count; ++it) {
            if (centre >= begin && centre < end) min_dist[centre] = -1.0f;
            const std::size_t slot = (it & 1) * workers + w;
            best_i[slot] = update(x, xn.data(), dim, begin, end, x + centre * dim, xn[centre],
                                  min_dist.data(), &best_v[slot]);
            barrier.arrive_and_wait(static_cast<int>(team));
            // Every member reduces the same way (first member wins ties: lower indices).
            float bv = -1.0f;
            std::size_t bi = n;
            for (std::size_t u = 0; u < team; ++u) {
                const std::size_t s = (it & 1) * workers + u;
                if (best_v[s] > bv) {
                    bv = best_v[s];
                    bi = best_i[s];
                }
            }
            centre = bi;
            if (w == 0) out[it] = static_cast<std::int64_t>(bi);
        }
    });
}

void coreset(const float* features, std::size_t n, std::size_t dim, std::size_t count,
             std::size_t projection_dim, std::uint64_t seed, std::int64_t* out, int threads) {
    require(n >= 1, "features: no rows");
    require(dim >= 1, "features: feature dimension must be at least 1");
    require(count >= 1 && count <= n, "n must be in [1, " + std::to_string(n) + "], got " +
                                          std::to_string(count));
    require_finite(features, n * dim, "features");
    if (count == n) {
        std::iota(out, out + n, std::int64_t{0});
        return;
    }
    std::uint64_t state = seed;
    const std::size_t start = static_cast<std::size_t>(splitmix64(state) % n);
    if (!coreset_projects(dim, projection_dim)) {
        coreset_select(features, n, dim, count, start, out, {threads});
        return;
    }
    std::vector<float> projected(n * projection_dim);
    coreset_project(features, n, dim, projection_dim, seed, projected.data(), threads);
    coreset_select(projected.data(), n, projection_dim, count, start, out, {threads});
}

}  // namespace autoweld
