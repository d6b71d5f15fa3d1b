#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <string>

#include "clahe.hpp"
#include "common.hpp"
#include "preprocess_kernels.hpp"
#include "thread_pool.hpp"

namespace autoweld {
namespace {

// Sparse row of a 1-D resize matrix: (source index, weight) pairs.
using SparseRow = std::vector<std::pair<int, double>>;

// cv::resize INTER_AREA with scale >= 1: computeResizeAreaTab (same thresholds, float weights).
std::vector<SparseRow> area_rows(int in, int out) {
    const double scale = 1.0 / (static_cast<double>(out) / in);
    std::vector<SparseRow> rows(out);
    for (int d = 0; d < out; ++d) {
        const double f1 = d * scale, f2 = f1 + scale;
        const double cell = std::min(scale, in - f1);
        int s1 = static_cast<int>(std::ceil(f1)), s2 = static_cast<int>(std::floor(f2));
        s2 = std::min(s2, in - 1);
        s1 = std::min(s1, s2);
        SparseRow& r = rows[d];
        if (s1 - f1 > 1e-3) r.emplace_back(s1 - 1, static_cast<float>((s1 - f1) / cell));
        for (int s = s1; s < s2; ++s) r.emplace_back(s, static_cast<float>(1.0 / cell));
        if (f2 - s2 > 1e-3)
            r.emplace_back(s2, static_cast<float>(std::min(std::min(f2 - s2, 1.0), cell) / cell));
    }
    return rows;
}

// cv::resize INTER_AREA's bilinear branch (upscaling), with its 11-bit fixed-point coefficients.
std::vector<SparseRow> area_linear_rows(int in, int out) {
    const double inv_scale = static_cast<double>(out) / in;
    const double scale = 1.0 / inv_scale;
    std::vector<SparseRow> rows(out);
    for (int d = 0; d < out; ++d) {
        int s = static_cast<int>(std::floor(d * scale));
        float f = static_cast<float>((d + 1) - (s + 1) * inv_scale);
        f = f <= 0 ? 0.f : f - std::floor(f);
        if (s < 0) f = 0.f, s = 0;
        if (s + 1 >= in && s >= in - 1) f = 0.f, s = in - 1;
        const long a0 = std::lrint((1.f - f) * 2048.f), a1 = std::lrint(f * 2048.f);
        rows[d].emplace_back(s, a0 / 2048.0);
        if (a1 != 0) rows[d].emplace_back(std::min(s + 1, in - 1), a1 / 2048.0);
    }
    return rows;
}

}  // namespace

std::vector<int> gaussian_kernel_q8(double sigma) {
    require_sigma(sigma);
    if (sigma == 0.0) return {256};
    const int n = static_cast<int>(std::lrint(sigma * 6 + 1)) | 1;
    // getGaussianKernelBitExact: symmetric, the centre tap is exp(0) = 1 before normalising.
    const double scale2 = -0.125 / (sigma * sigma);
    const int half = (n - 1) / 2;
    std::vector<double> values(half);
    double sum = 0.0;
    for (int i = 0, x = 1 - n; i < half; ++i, x += 2) {
        values[i] = std::exp(static_cast<double>(x * x) * scale2);
        sum += values[i];
    }
    sum = sum * 2 + 1.0;
    const double mul = 1.0 / sum;
    // getGaussianKernelFixedPoint_ED with 8 fraction bits.
    std::vector<int> q(n);
    double err = 0.0;
    int total = 0;
    for (int i = 0; i < half; ++i) {
        const double adj = values[i] * mul * 256.0 + err;
        const int v = static_cast<int>(std::lrint(adj));
        err = adj - v;
        q[i] = q[n - 1 - i] = v;
        total += v;
    }
    q[half] = 256 - 2 * total;
    return q;
}

AxisFilter make_axis_filter(int in, int out, double sigma, bool area) {
    const std::vector<int> g = gaussian_kernel_q8(sigma);
    const int radius = static_cast<int>(g.size() / 2);
    const std::vector<SparseRow> rows = area ? area_rows(in, out) : area_linear_rows(in, out);
    AxisFilter f;
    f.out_size = out;
    f.first.resize(out);
    f.taps.resize(out);
    std::vector<std::vector<double>> dense(out);
    for (int d = 0; d < out; ++d) {
        int lo = in, hi = -1;
        for (const auto& [s, w] : rows[d]) {
            for (int t = -radius; t <= radius; ++t) {
                const int idx = reflect101(s + t, in);
                lo = std::min(lo, idx);
                hi = std::max(hi, idx);
            }
        }
        std::vector<double>& band = dense[d];
        band.assign(static_cast<std::size_t>(hi - lo + 1), 0.0);
        for (const auto& [s, w] : rows[d])
            for (int t = -radius; t <= radius; ++t)
                band[reflect101(s + t, in) - lo] += w * (g[t + radius] / 256.0);
        f.first[d] = lo;
        f.taps[d] = hi - lo + 1;
        f.max_taps = std::max(f.max_taps, f.taps[d]);
    }
    f.weight.assign(static_cast<std::size_t>(out) * f.max_taps, 0.f);
    for (int d = 0; d < out; ++d)
        for (int t = 0; t < f.taps[d]; ++t)
            f.weight[static_cast<std::size_t>(d) * f.max_taps + t] = static_cast<float>(dense[d][t]);
    return f;
}

void gaussian_blur_u8(const std::uint8_t* image, int height, int width, int channels,
                      double sigma, std::uint8_t* out, int threads) {
    const std::vector<int> g = gaussian_kernel_q8(sigma);
    const int radius = static_cast<int>(g.size() / 2);
    const std::size_t row_len = static_cast<std::size_t>(width) * channels;
    // Horizontal: exact integer sums in units of 1/256 (OpenCV's ufixedpoint16 row filter).
    std::vector<std::uint32_t> horizontal(static_cast<std::size_t>(height) * row_len);
    pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t b, std::size_t e) {
        for (std::size_t y = b; y < e; ++y) {
            const std::uint8_t* src = image + y * row_len;
            std::uint32_t* dst = horizontal.data() + y * row_len;
            for (int x = 0; x < width; ++x)
                for (int ch = 0; ch < channels; ++ch) {
                    std::uint32_t acc = 0;
                    for (int t = -radius; t <= radius; ++t)
                        acc += static_cast<std::uint32_t>(g[t + radius]) *
                               src[reflect101(x + t, width) * channels + ch];
                    dst[x * channels + ch] = acc;
                }
        }
    });
    // Vertical: units of 1/65536, rounded half up to 8 bits as ufixedpoint32 -> uint8.
    pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t b, std::size_t e) {
        for (std::size_t y = b; y < e; ++y) {
            std::uint8_t* dst = out + y * row_len;
            for (std::size_t k = 0; k < row_len; ++k) {
                std::uint64_t acc = 0;
                for (int t = -radius; t <= radius; ++t)
                    acc += static_cast<std::uint64_t>(g[t + radius]) *
                           horizontal[static_cast<std::size_t>(reflect101(static_cast<int>(y) + t, height)) * row_len + k];
                const std::uint64_t v = (acc + 32768) >> 16;
                dst[k] = static_cast<std::uint8_t>(v > 255 ? 255 : v);
            }
        }
    });
}

void preprocess(const std::uint8_t* image, int height, int width, int channels,
                const PreprocessConfig& c, float* out) {
    require(image != nullptr && out != nullptr, "image and out must not be null");
    require(height >= 1 && width >= 1, "image must not be empty");
    require(channels == 1 || channels == 3,
            "image must have 1 or 3 channels, got " + std::to_string(channels));
    require(c.size >= 1, "size must be >= 1");
    require(std::isfinite(c.sigma) && c.sigma >= 0.0, "sigma must be finite and >= 0");
    require(std::isfinite(c.clip_limit), "clip_limit must be finite");
    require(c.tiles_x >= 1 && c.tiles_y >= 1, "tile_grid must be >= 1 in each direction");
    for (int k = 0; k < 3; ++k) {
        require(std::isfinite(c.mean[k]), "mean must be finite");
        require(std::isfinite(c.std[k]) && c.std[k] != 0.0, "std must be finite and non-zero");
    }
    // Below ~64k pixels a second thread costs more to start than it saves.
    const int threads =
        static_cast<long long>(height) * width * channels < (1LL << 16) ? 1 : c.threads;
    const int size = c.size;
    const std::size_t pixels = static_cast<std::size_t>(height) * width;

    float scale[3], bias[3];  // per output (RGB) channel
    for (int k = 0; k < 3; ++k) {
        scale[k] = static_cast<float>(1.0 / (255.0 * c.std[k]));
        bias[k] = static_cast<float>(-c.mean[k] / c.std[k]);
    }
    const std::size_t plane = static_cast<std::size_t>(size) * size;

    // A camera frame already at the engine's size, without CLAHE or blur: the resampling below
    // would weight each pixel by exactly 1 (INTER_AREA at scale 1), so normalise directly —
    // the same float expression as the general path's last step, hence the same bits.
    if (!c.clahe && c.sigma == 0.0 && size == width && size == height) {
        pool::parallel_for_static(static_cast<std::size_t>(height), threads,
                                  [&](std::size_t b, std::size_t e) {
            for (int k = 0; k < 3; ++k) {
                const int src_ch = channels == 1 ? 0 : 2 - k;  // BGR source, RGB planes
                for (std::size_t y = b; y < e; ++y) {
                    const std::uint8_t* row = image + y * width * channels + src_ch;
                    float* dst = out + k * plane + y * size;
                    for (int x = 0; x < width; ++x)
                        dst[x] = static_cast<float>(row[x * channels]) * scale[k] + bias[k];
                }
            }
        });
        return;
    }

    // OpenCV takes INTER_AREA's averaging branch only when neither axis upscales.
    const bool area = size <= width && size <= height;
    // Upscaling: OpenCV's bilinear branch truncates in fixed point, so smoothing is done apart
    // and rounded to 8 bits exactly as GaussianBlur does, to stay within one grey level.
    const bool separate_blur = !area && c.sigma > 0.0;
    const double fused_sigma = separate_blur ? 0.0 : c.sigma;
    const AxisFilter fx = make_axis_filter(width, size, fused_sigma, area);
    const AxisFilter fy = make_axis_filter(height, size, fused_sigma, area);

    // The kernels for c.isa, checked once (same bytes on every ISA).
    const detail::LabKernels lab_kernels = detail::lab_kernels(c.isa);
    const detail::FilterKernels filters = detail::filter_kernels(c.isa);

    // CLAHE tables (for colour: of OpenCV's 8-bit Lab lightness).
    ClaheTables tables;
    // L, a, b planes of the whole image: written in full before they are read, so allocated
    // without value-initialising (zero-filling 3 bytes a pixel was a serial ~1 ms at 2048^2).
    std::unique_ptr<std::uint8_t[]> lab_planes;
    std::uint8_t* lightness = nullptr;
    std::uint8_t* lab = nullptr;  // a plane, then b plane
    if (c.clahe) {
        if (channels == 1) {
            clahe_build_tables(image, height, width, c.clip_limit, c.tiles_x, c.tiles_y, threads,
                               tables);
        } else {
            lab_planes.reset(new std::uint8_t[pixels * 3]);
            lightness = lab_planes.get();
            lab = lightness + pixels;
            pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16,
                         [&](std::size_t b, std::size_t e) {
                             const std::size_t p0 = b * width, p1 = e * width;
                             lab_kernels.to_lab(
                                 image + p0 * 3, p1 - p0, lightness + p0, lab + p0,
                                 lab + pixels + p0);
                         });
            clahe_build_tables(lightness, height, width, c.clip_limit, c.tiles_x,
                               c.tiles_y, threads, tables);
        }
    }

    // Row y of the enhanced image as `channels` uint8 planes of `width` (B, G, R for colour).
    // `light` is scratch of `width` bytes. The applier is per thread.
    auto enhanced_planes = [&](std::size_t y, const std::uint8_t* src_image, bool with_clahe,
                               ClaheRowApplier* applier, std::uint8_t* planes,
                               std::uint8_t* light) {
        if (channels == 1) {
            if (with_clahe)
                applier->apply(static_cast<int>(y), src_image + y * width, planes);
            else
                std::copy(src_image + y * width, src_image + (y + 1) * width, planes);
        } else if (with_clahe) {
            applier->apply(static_cast<int>(y), lightness + y * width, light);
            lab_kernels.to_bgr(
                light, lab + y * width, lab + pixels + y * width, static_cast<std::size_t>(width),
                planes, planes + width, planes + 2 * width);
        } else {
            const std::uint8_t* row = src_image + y * width * 3;
            for (int x = 0; x < width; ++x) {
                planes[x] = row[3 * x];
                planes[width + x] = row[3 * x + 1];
                planes[2 * width + x] = row[3 * x + 2];
            }
        }
    };

    std::vector<std::uint8_t> blurred;
    bool use_clahe = c.clahe;
    if (separate_blur) {
        std::vector<std::uint8_t> enhanced_image(pixels * channels);
        pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t b, std::size_t e) {
            std::unique_ptr<ClaheRowApplier> applier;
            if (c.clahe) applier = std::make_unique<ClaheRowApplier>(tables, c.isa);
            std::vector<std::uint8_t> planes(static_cast<std::size_t>(width) * channels), light(width);
            for (std::size_t y = b; y < e; ++y) {
                enhanced_planes(y, image, c.clahe, applier.get(), planes.data(), light.data());
                std::uint8_t* dst = enhanced_image.data() + y * width * channels;
                for (int x = 0; x < width; ++x)
                    for (int ch = 0; ch < channels; ++ch)
                        dst[x * channels + ch] = planes[static_cast<std::size_t>(ch) * width + x];
            }
        });
        blurred.resize(pixels * channels);
        gaussian_blur_u8(enhanced_image.data(), height, width, channels, c.sigma,
                         blurred.data(), threads);
        image = blurred.data();
        use_clahe = false;
    }

    // Enhanced rows (CLAHE, Lab round trip, deinterleave) are produced on demand, per thread,
    // into a small cache of the most recent ones, and never stored as a whole image: each
    // source row is made about once (again only at the edge of a thread's chunk). Gray without
    // CLAHE is read in place.
    const std::size_t erow = static_cast<std::size_t>(width) * channels;
    const bool in_place = !use_clahe && channels == 1;
    // Stage 2, per output row: vertical filter over whole source rows (contiguous, vectorised),
    // then the horizontal filter of that one row, normalised and written as RGB planes.
    // Horizontal weights padded to a multiple of 8 taps (zeros) for the vector kernel.
    const int x_stride = (fx.max_taps + 7) / 8 * 8;
    std::vector<float> x_weight(static_cast<std::size_t>(size) * x_stride, 0.f);
    for (int j = 0; j < size; ++j)
        std::copy(fx.weight.begin() + static_cast<std::ptrdiff_t>(j) * fx.max_taps,
                  fx.weight.begin() + static_cast<std::ptrdiff_t>(j) * fx.max_taps + fx.taps[j],
                  x_weight.begin() + static_cast<std::ptrdiff_t>(j) * x_stride);
    // Every chunk starts with an empty row cache, so the source rows under a chunk boundary
    // (the vertical band's overlap, up to 6 sigma of rows) are enhanced twice: few, large chunks
    // (two per thread, for balance) keep that redundant CLAHE + Lab work at a few percent.
    const int workers = threads == 1 ? 1 : resolve_threads(threads);
    const std::size_t row_grain = std::max<std::size_t>(
        4, (static_cast<std::size_t>(size) + 2 * workers - 1) / (2 * static_cast<std::size_t>(workers)));
    pool::parallel_for_dynamic(static_cast<std::size_t>(size), threads, workers == 1 ? size : row_grain,
                                 [&](std::size_t b, std::size_t e) {
        // The padded horizontal kernel reads up to x_stride past a plane's row: zeros (weight 0).
        std::vector<float> acc(erow + static_cast<std::size_t>(x_stride), 0.f), sums(size);
        const std::size_t slots = static_cast<std::size_t>(fy.max_taps) + 1;
        std::vector<std::uint8_t> cache(in_place ? 0 : slots * erow), light(width);
        std::vector<long long> cached_row(slots, -1);  // source row held by each slot
        std::vector<const std::uint8_t*> rows(static_cast<std::size_t>(fy.max_taps));
        std::unique_ptr<ClaheRowApplier> applier;
        if (use_clahe) applier = std::make_unique<ClaheRowApplier>(tables, c.isa);
        for (std::size_t i = b; i < e; ++i) {
            const float* w = fy.weight.data() + i * fy.max_taps;
            for (int t = 0; t < fy.taps[i]; ++t) {
                const std::size_t y = static_cast<std::size_t>(fy.first[i] + t);
                if (in_place) {
                    rows[t] = image + y * width;
                    continue;
                }
                const std::size_t slot = y % slots;  // rows of one output never collide
                std::uint8_t* dst = cache.data() + slot * erow;
                if (cached_row[slot] != static_cast<long long>(y)) {
                    enhanced_planes(y, image, use_clahe, applier.get(), dst, light.data());
                    cached_row[slot] = static_cast<long long>(y);
                }
                rows[t] = dst;
            }
            filters.weighted_rows(rows.data(), w, fy.taps[i], erow, acc.data());
            // Output channel k is RGB; the source planes are BGR (2 - k). A gray source is
            // filtered once and written to all three planes.
            for (int src_ch = 0; src_ch < channels; ++src_ch) {
                const float* v = acc.data() + static_cast<std::size_t>(src_ch) * width;
                filters.filter_columns(v, x_weight.data(), x_stride, fx.first.data(), size,
                                       sums.data());
                for (int k = 0; k < 3; ++k) {
                    if (channels == 3 && k != 2 - src_ch) continue;
                    float* dst = out + k * plane + i * size;
                    for (int j = 0; j < size; ++j) dst[j] = sums[j] * scale[k] + bias[k];
                }
            }
        }
    });
}

namespace detail {

void filter_columns_scalar(const float* row, const float* weights, int stride, const int* first,
                           int count, float* out) {
    for (int j = 0; j < count; ++j) {
        const float* v = row + first[j];
        const float* w = weights + static_cast<std::size_t>(j) * stride;
        float sum = 0.f;
        for (int t = 0; t < stride; ++t) sum += w[t] * v[t];
        out[j] = sum;
    }
}

void weighted_rows_scalar(const std::uint8_t* const* rows, const float* weights, int count,
                          std::size_t n, float* out) {
    std::fill(out, out + n, 0.f);
    for (int t = 0; t < count; ++t) {
        const float w = weights[t];
        const std::uint8_t* r = rows[t];
        for (std::size_t k = 0; k < n; ++k) out[k] += w * static_cast<float>(r[k]);
    }
}

FilterKernels filter_kernels(Isa cap) {
    return pick_kernels(cap, FilterKernels{weighted_rows_scalar, filter_columns_scalar},
                        FilterKernels{weighted_rows_avx2, filter_columns_avx2},
                        FilterKernels{weighted_rows_avx512, filter_columns_avx2});
}

}  // namespace detail

}  // namespace autoweld
