// Preprocessing core: kernels sum to one, constant images map to the normalised constant,
// output layout, bad arguments.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "anomaly_map.hpp"
#include "check.hpp"
#include "common.hpp"
#include "isa.hpp"
#include "preprocess.hpp"
#include "preprocess_kernels.hpp"
#include "thread_pool.hpp"

int main() {
    // OpenCV's fixed-point Gaussian taps sum to exactly 256 and are symmetric.
    for (double sigma : {0.0, 0.3, 1.0, 2.0, 4.0, 7.5}) {
        const std::vector<int> k = autoweld::gaussian_kernel_q8(sigma);
        int sum = 0;
        for (int v : k) sum += v;
        CHECK(sum == 256);
        CHECK(k.size() % 2 == 1);
        for (std::size_t i = 0; i < k.size(); ++i) CHECK(k[i] == k[k.size() - 1 - i]);
    }
    CHECK(autoweld::gaussian_kernel_q8(2.0).size() == 13);
    // anomalib's float kernel: size 2*int(4*sigma+0.5)+1, sums to 1.
    {
        const std::vector<float> k = autoweld::anomaly_gaussian_kernel(4.0);
        CHECK(k.size() == 33);
        double sum = 0;
        for (float v : k) sum += v;
        CHECK_NEAR(sum, 1.0, 1e-6);
    }
    // Composite axis filters: each output's weights sum to one (area and bilinear branches).
    for (auto [in, out, area] : {std::tuple{1000, 224, true}, std::tuple{50, 224, false},
                                 std::tuple{224, 224, true}, std::tuple{7, 3, true}}) {
        for (double sigma : {0.0, 1.5}) {
            const autoweld::AxisFilter f = autoweld::make_axis_filter(in, out, sigma, area);
            bool ok = true;
            for (int d = 0; d < out; ++d) {
                double s = 0;
                for (int t = 0; t < f.taps[d]; ++t) s += f.weight[d * f.max_taps + t];
                ok = ok && std::fabs(s - 1.0) < 1e-3;
                ok = ok && f.first[d] >= 0 && f.first[d] + f.taps[d] <= in;
            }
            CHECK(ok);
        }
    }
    // The vertical kernel: AVX2 and scalar agree (tails included) and match a direct sum.
    {
        const std::size_t n = 77, stride = 80;
        std::vector<std::uint8_t> rows(stride * 5);
        for (std::size_t k = 0; k < rows.size(); ++k) rows[k] = static_cast<std::uint8_t>(k * 37);
        const float w[5] = {0.1f, 0.2f, 0.4f, 0.2f, 0.1f};
        std::vector<float> a(n), b(n);
        const std::uint8_t* ptrs[5];
        for (int t = 0; t < 5; ++t) ptrs[t] = rows.data() + t * stride;
        autoweld::detail::weighted_rows_scalar(ptrs, w, 5, n, a.data());
        bool ok = true;
        for (std::size_t k = 0; k < n; ++k) {
            double direct = 0;
            for (int t = 0; t < 5; ++t) direct += w[t] * rows[t * stride + k];
            ok = ok && std::fabs(a[k] - direct) < 1e-3;
        }
        CHECK(ok);
        if (autoweld::isa_available(autoweld::Isa::avx2)) {
            autoweld::detail::weighted_rows_avx2(ptrs, w, 5, n, b.data());
            bool same = true;
            for (std::size_t k = 0; k < n; ++k) same = same && std::fabs(a[k] - b[k]) < 1e-4;
            CHECK(same);
        }
        if (autoweld::isa_available(autoweld::Isa::avx512)) {  // 64 columns per step, then a tail of 13
            std::fill(b.begin(), b.end(), -1.f);
            autoweld::detail::weighted_rows_avx512(ptrs, w, 5, n, b.data());
            bool same = true;
            for (std::size_t k = 0; k < n; ++k) same = same && std::fabs(a[k] - b[k]) < 1e-4;
            CHECK(same);
        }
    }
    // The horizontal kernel: AVX2 (groups of 8 outputs plus a tail) and scalar match a direct
    // sum over the padded taps, for strides of one and three vectors.
    for (const int stride : {8, 24}) {
        const int count = 29, width = 90;  // 29 = 3 groups of 8 + 5 tail outputs
        std::vector<float> row(width + stride), weights(static_cast<std::size_t>(count) * stride);
        std::vector<int> first(count);
        for (int k = 0; k < width + stride; ++k) row[k] = static_cast<float>((k * 53) % 256);
        for (std::size_t k = 0; k < weights.size(); ++k)
            weights[k] = static_cast<float>((k * 7) % 11) / 17.0f;
        for (int j = 0; j < count; ++j) first[j] = (j * 3) % (width - 1);
        std::vector<float> a(count), b(count, -1.f);
        autoweld::detail::filter_columns_scalar(row.data(), weights.data(), stride, first.data(),
                                                count, a.data());
        bool ok = true;
        for (int j = 0; j < count; ++j) {
            double direct = 0;
            for (int t = 0; t < stride; ++t)
                direct += static_cast<double>(weights[j * stride + t]) * row[first[j] + t];
            ok = ok && std::fabs(a[j] - direct) < 1e-3 * (1 + std::fabs(direct));
        }
        CHECK(ok);
        if (autoweld::isa_available(autoweld::Isa::avx2)) {
            autoweld::detail::filter_columns_avx2(row.data(), weights.data(), stride, first.data(),
                                                  count, b.data());
            bool same = true;
            for (int j = 0; j < count; ++j)
                same = same && std::fabs(a[j] - b[j]) < 1e-4 * (1 + std::fabs(a[j]));
            CHECK(same);
        }
    }
    // A constant BGR image without CLAHE comes out as the normalised constant per RGB plane.
    {
        const int h = 37, w = 53, size = 16;
        std::vector<std::uint8_t> img(h * w * 3);
        for (int p = 0; p < h * w; ++p) {
            img[p * 3] = 10;   // B
            img[p * 3 + 1] = 20;
            img[p * 3 + 2] = 200;  // R
        }
        autoweld::PreprocessConfig c;
        c.size = size;
        c.clahe = false;
        c.sigma = 1.0;
        c.threads = 2;
        std::vector<float> out(3 * size * size);
        autoweld::preprocess(img.data(), h, w, 3, c, out.data());
        const float r = static_cast<float>((200 / 255.0 - 0.485) / 0.229);
        const float b = static_cast<float>((10 / 255.0 - 0.406) / 0.225);
        bool ok = true;
        for (int i = 0; i < size * size; ++i)
            ok = ok && std::fabs(out[i] - r) < 1e-4 && std::fabs(out[2 * size * size + i] - b) < 1e-4;
        CHECK(ok);
        // Bad arguments.
        CHECK_THROWS(autoweld::preprocess(img.data(), h, w, 4, c, out.data()), std::invalid_argument);
        c.size = 0;
        CHECK_THROWS(autoweld::preprocess(img.data(), h, w, 3, c, out.data()), std::invalid_argument);
        c.size = size;
        c.sigma = -1;
        CHECK_THROWS(autoweld::preprocess(img.data(), h, w, 3, c, out.data()), std::invalid_argument);
    }
    // The portable (scalar) pipeline equals the dispatched one (AVX2 / AVX-512 where the CPU has
    // them): same bytes from CLAHE and the Lab round trip, so the floats differ by round-off only.
    // Colour and gray, with and without CLAHE and smoothing, downscale and upscale.
    {
        struct Case { int h, w, channels, size; bool clahe; double sigma; };
        const Case cases[] = {{300, 401, 3, 128, true, 0.0}, {300, 401, 3, 96, true, 2.0},
                              {257, 263, 1, 64, true, 1.0},  {97, 130, 3, 160, true, 1.5},
                              {120, 77, 3, 50, false, 0.7},  {64, 64, 1, 64, false, 0.0}};
        for (const Case& k : cases) {
            std::vector<std::uint8_t> img(static_cast<std::size_t>(k.h) * k.w * k.channels);
            for (std::size_t p = 0; p < img.size(); ++p)
                img[p] = static_cast<std::uint8_t>((p * 2654435761u >> 13) ^ (p / 7));
            autoweld::PreprocessConfig c;
            c.size = k.size;
            c.clahe = k.clahe;
            c.sigma = k.sigma;
            c.threads = 2;
            std::vector<float> fast(3 * k.size * k.size), portable(fast.size(), -99.f);
            autoweld::preprocess(img.data(), k.h, k.w, k.channels, c, fast.data());
            c.isa = autoweld::Isa::portable;
            autoweld::preprocess(img.data(), k.h, k.w, k.channels, c, portable.data());
            double worst = 0;
            for (std::size_t q = 0; q < fast.size(); ++q)
                worst = std::max(worst, static_cast<double>(std::fabs(fast[q] - portable[q])));
            CHECK(worst < 1e-4);  // normalised units: 1 grey level is ~0.017
        }
    }
    // Anomaly map: a constant map stays constant; NaN is refused.
    {
        std::vector<float> s(2 * 4 * 5, 2.5f), out(2 * 30 * 31);
        autoweld::anomaly_map(s.data(), 2, 4, 5, 30, 31, 4.0, out.data(), 2);
        bool ok = true;
        for (float v : out) ok = ok && std::fabs(v - 2.5f) < 1e-5f;
        CHECK(ok);
        s[3] = std::nanf("");
        CHECK_THROWS(autoweld::anomaly_map(s.data(), 2, 4, 5, 30, 31, 4.0, out.data(), 2),
                     std::invalid_argument);
    }
    // Anomaly map blur: every instruction set gives the same bits, and they are those of the
    // plain definition (upsample, then each axis's taps summed in order, multiply then add).
    {
        struct MapCase { int n, h, w, out_h, out_w; double sigma; };
        const MapCase cases[] = {{1, 44, 44, 352, 352, 4.0}, {2, 7, 5, 61, 45, 2.5},
                                 {1, 3, 3, 8, 8, 4.0},       {1, 36, 36, 288, 288, 1.0},
                                 {1, 28, 28, 224, 224, 0.0}};
        for (const MapCase& k : cases) {
            std::vector<float> s(static_cast<std::size_t>(k.n) * k.h * k.w);
            for (std::size_t p = 0; p < s.size(); ++p)
                s[p] = static_cast<float>((p * 2654435761u >> 9) % 1000) / 250.f;
            const std::size_t plane = static_cast<std::size_t>(k.out_h) * k.out_w;
            std::vector<float> best(k.n * plane), portable(k.n * plane), up(k.n * plane);
            autoweld::anomaly_map(s.data(), k.n, k.h, k.w, k.out_h, k.out_w, k.sigma, best.data(),
                                  2);
            autoweld::anomaly_map(s.data(), k.n, k.h, k.w, k.out_h, k.out_w, k.sigma,
                                  portable.data(), 1, autoweld::Isa::portable);
            CHECK(std::memcmp(best.data(), portable.data(), best.size() * sizeof(float)) == 0);
            // the plain definition, written out here
            autoweld::anomaly_map(s.data(), k.n, k.h, k.w, k.out_h, k.out_w, 0.0, up.data(), 1);
            const std::vector<float> g = autoweld::anomaly_gaussian_kernel(k.sigma);
            const int r = static_cast<int>(g.size() / 2);
            // out(y, x) = sum over t in order of g[t] * in(reflected position), one axis at a time
            const auto blur_axis = [&](const std::vector<float>& in, bool along_x) {
                std::vector<float> blurred(in.size());
                for (int i = 0; i < k.n; ++i)
                    for (int y = 0; y < k.out_h; ++y)
                        for (int x = 0; x < k.out_w; ++x) {
                            float acc = 0.f;
                            for (int t = -r; t <= r; ++t) {
                                const int sy = along_x ? y : autoweld::reflect101(y + t, k.out_h);
                                const int sx = along_x ? autoweld::reflect101(x + t, k.out_w) : x;
                                const float term = g[t + r] * in[i * plane + sy * k.out_w + sx];
                                acc += term;
                            }
                            blurred[i * plane + y * k.out_w + x] = acc;
                        }
                return blurred;
            };
            const std::vector<float> plain = blur_axis(blur_axis(up, true), false);
            CHECK(std::memcmp(best.data(), plain.data(), best.size() * sizeof(float)) == 0);
        }
    }
    return autoweld_test::finish("test_preprocess");
}
