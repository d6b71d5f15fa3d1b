#include "anomaly_map.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>

#include "anomaly_map_kernels.hpp"
#include "common.hpp"
#include "thread_pool.hpp"

namespace autoweld {
namespace {

// One axis of torch's bilinear (align_corners=False): source indices and weights per output.
struct LinearAxis {
    std::vector<int> i0, i1;
    std::vector<float> w0, w1;
};

LinearAxis linear_axis(int in, int out) {
    LinearAxis a;
    a.i0.resize(out);
    a.i1.resize(out);
    a.w0.resize(out);
    a.w1.resize(out);
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    for (int d = 0; d < out; ++d) {
        float src = scale * (static_cast<float>(d) + 0.5f) - 0.5f;
        if (src < 0.f) src = 0.f;
        const int i0 = std::min(static_cast<int>(src), in - 1);
        const float l1 = src - static_cast<float>(i0);
        a.i0[d] = i0;
        a.i1[d] = i0 + (i0 < in - 1 ? 1 : 0);
        a.w1[d] = l1;
        a.w0[d] = 1.f - l1;
    }
    return a;
}

}  // namespace

// Blocks of outputs summed in registers: a tap costs one load and one multiply-add per output,
// not a load and a store of the running sum.
void weighted_rows_portable(const float* kernel, std::size_t taps, const float* const* rows,
                            int width, float* dst) {
    constexpr int kBlock = 16;
    int x = 0;
    for (; x + kBlock <= width; x += kBlock) {
        float acc[kBlock] = {};
        for (std::size_t t = 0; t < taps; ++t) {
            const float k = kernel[t];
            const float* p = rows[t] + x;
            for (int j = 0; j < kBlock; ++j) acc[j] += k * p[j];
        }
        for (int j = 0; j < kBlock; ++j) dst[x + j] = acc[j];
    }
    for (; x < width; ++x) {
        float acc = 0.f;
        for (std::size_t t = 0; t < taps; ++t) acc += kernel[t] * rows[t][x];
        dst[x] = acc;
    }
}

std::vector<float> anomaly_gaussian_kernel(double sigma) {
    require_sigma(sigma);
    if (sigma == 0.0) return {1.0f};
    const int radius = static_cast<int>(4.0 * sigma + 0.5);
    const int size = 2 * radius + 1;
    std::vector<double> k(size);
    double sum = 0.0;
    for (int i = 0; i < size; ++i) {
        const double x = i - radius;
        k[i] = std::exp(-(x * x) / (2.0 * sigma * sigma));
        sum += k[i];
    }
    std::vector<float> out(size);
    for (int i = 0; i < size; ++i) out[i] = static_cast<float>(k[i] / sum);
    return out;
}

void anomaly_map(const float* scores, int count, int height, int width, int out_height,
                 int out_width, double sigma, float* out, int threads, Isa isa) {
    require_isa(isa);
    const auto weighted_rows = isa >= Isa::avx2 ? weighted_rows_avx2 : weighted_rows_portable;
    require(scores != nullptr && out != nullptr, "patch_scores and out must not be null");
    require(count >= 1 && height >= 1 && width >= 1, "patch_scores must not be empty");
    require(out_height >= 1 && out_width >= 1, "out_size must be >= 1 in each direction");
    const std::vector<float> kernel = anomaly_gaussian_kernel(sigma);
    const std::size_t n_in = static_cast<std::size_t>(count) * height * width;
    for (std::size_t i = 0; i < n_in; ++i)
        require(std::isfinite(scores[i]), "patch_scores must be finite (found NaN or Inf)");

    const LinearAxis ax = linear_axis(width, out_width), ay = linear_axis(height, out_height);
    const int radius = static_cast<int>(kernel.size() / 2);
    const std::size_t plane = static_cast<std::size_t>(out_height) * out_width;
    const bool blur = kernel.size() > 1;
    std::vector<float> up(blur ? static_cast<std::size_t>(count) * plane : 0);
    float* stage = blur ? up.data() : out;

    // Upsample, then blur each row horizontally (into `stage`). The upsampled row is written
    // with `radius` reflected pixels on each side, so every output reads its taps from one
    // contiguous run (weighted_rows: blocks of outputs summed in registers).
    const std::size_t rows = static_cast<std::size_t>(count) * out_height;
    pool::parallel_for_static(rows, threads, [&](std::size_t b, std::size_t e) {
        std::vector<float> padded(static_cast<std::size_t>(out_width) + 2 * radius);
        std::vector<const float*> taps(kernel.size());
        for (std::size_t t = 0; t < taps.size(); ++t) taps[t] = padded.data() + t;
        for (std::size_t r = b; r < e; ++r) {
            const int n = static_cast<int>(r / out_height), y = static_cast<int>(r % out_height);
            const float* src = scores + static_cast<std::size_t>(n) * height * width;
            const float* r0 = src + static_cast<std::size_t>(ay.i0[y]) * width;
            const float* r1 = src + static_cast<std::size_t>(ay.i1[y]) * width;
            const float wy0 = ay.w0[y], wy1 = ay.w1[y];
            float* dst = stage + r * out_width;
            float* target = blur ? padded.data() + radius : dst;
            for (int x = 0; x < out_width; ++x) {
                const int x0 = ax.i0[x], x1 = ax.i1[x];
                target[x] = wy0 * (ax.w0[x] * r0[x0] + ax.w1[x] * r0[x1]) +
                            wy1 * (ax.w0[x] * r1[x0] + ax.w1[x] * r1[x1]);
            }
            if (!blur) continue;
            for (int t = 1; t <= radius; ++t) {
                target[-t] = target[reflect101(-t, out_width)];
                target[out_width - 1 + t] = target[reflect101(out_width - 1 + t, out_width)];
            }
            weighted_rows(kernel.data(), kernel.size(), taps.data(), out_width, dst);
        }
    });
    if (!blur) return;

    // Vertical blur, `stage` -> `out`, row by row so the inner loop runs along contiguous x.
    pool::parallel_for_static(rows, threads, [&](std::size_t b, std::size_t e) {
        std::vector<const float*> taps(kernel.size());
        for (std::size_t r = b; r < e; ++r) {
            const int n = static_cast<int>(r / out_height), y = static_cast<int>(r % out_height);
            const float* src = stage + static_cast<std::size_t>(n) * plane;
            for (std::size_t t = 0; t < taps.size(); ++t) {
                const int source = reflect101(y + static_cast<int>(t) - radius, out_height);
                taps[t] = src + static_cast<std::size_t>(source) * out_width;
            }
            weighted_rows(kernel.data(), kernel.size(), taps.data(), out_width,
                          out + r * out_width);
        }
    });
}

}  // namespace autoweld
