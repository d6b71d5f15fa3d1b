// CLAHE bit-identical to OpenCV (modules/imgproc/src/clahe.cpp): the same padding, clip-limit
// rounding, residual redistribution, LUT scale and float interpolation arithmetic.
//
// Float expressions here must be evaluated exactly as written (no fused multiply-add), or the
// rounding of a few pixels would differ from OpenCV's; hence the fp-contract pragma.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#include "clahe.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <memory>
#include <string>

#include "clahe_lab_tables.hpp"
#include "common.hpp"
#include "thread_pool.hpp"

namespace autoweld {
namespace {

// cvRound then saturate to uint8 (OpenCV's saturate_cast<uchar>(float)).
inline std::uint8_t round_to_u8(float v) {
    long r = std::lrint(v);
    return static_cast<std::uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
}

void check_clahe_args(const void* image, int height, int width, double clip_limit, int tiles_x,
                      int tiles_y) {
    require(image != nullptr, "image must not be null");
    require(height >= 1 && width >= 1, "image must not be empty (got " + std::to_string(height) +
                                            "x" + std::to_string(width) + ")");
    require(std::isfinite(clip_limit), "clip_limit must be finite");
    require(tiles_x >= 1 && tiles_y >= 1, "tile_grid must be >= 1 in each direction (got " +
                                              std::to_string(tiles_x) + ", " +
                                              std::to_string(tiles_y) + ")");
    // 256 LUT bytes per tile: 2^16 tiles (e.g. 256 x 256) is already 16 MB.
    require(static_cast<long long>(tiles_x) * tiles_y <= (1LL << 16),
            "tile_grid is too large (at most 65536 tiles)");
    require(static_cast<long long>(height) * width <= (1LL << 31) - 1, "image is too large");
}

}  // namespace


// ---- OpenCV's 8-bit sRGB <-> Lab (integer arithmetic, bit-exact) -----------------------------
namespace {
// CV_DESCALE: round-half-up right shift.
constexpr int descale(int v, int n) { return (v + (1 << (n - 1))) >> n; }
// RGB2Lab_b coefficients: round(2^12 * sRGB->XYZ(D65) / white point), ordered for B, G, R input.
constexpr int kFwd[9] = {778, 1541, 1777, 296, 2929, 871, 3575, 448, 73};
// Lab2RGBinteger coefficients: round(2^12 * XYZ->sRGB(D65) * white point); rows give R, G, B.
constexpr int kInv[9] = {12615, -6296, -2223, -3773, 7684, 185, 217, -836, 4715};
constexpr int kMinAB = -8145;
constexpr int kBase = 1 << 14;

// a, b -> x, z table of Lab2RGBinteger (pure integer formula, built once).
const std::vector<int>& ab_to_xz() {
    static const std::vector<int> table = [] {
        std::vector<int> t(kBase * 9 / 4);
        for (int i = kMinAB; i < kBase * 9 / 4 + kMinAB; ++i) {
            long long v;
            if (i <= 3390)
                v = static_cast<long long>(i) * 108 / 841 - kBase * 16 / 116 * 108 / 841;
            else
                v = static_cast<long long>(i) * i / kBase * i / kBase;
            t[i - kMinAB] = static_cast<int>(v);
        }
        return t;
    }();
    return table;
}

inline std::uint8_t clamp_u8(int v) { return static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v)); }
}  // namespace

namespace detail {

const LabTables& lab_tables_i32() {
    static const LabTables tables = [] {
        using namespace lab_tables;
        LabTables t;
        t.gamma.assign(std::begin(kGamma), std::end(kGamma));
        t.cbrt.assign(std::begin(kCbrt), std::end(kCbrt));
        t.inv_gamma.assign(std::begin(kInvGamma), std::end(kInvGamma));
        t.y_ify.resize(256);
        for (int i = 0; i < 256; ++i) t.y_ify[i] = kLToYF[2 * i] | (kLToYF[2 * i + 1] << 16);
        t.ab_to_xz = ab_to_xz();
        return t;
    }();
    return tables;
}

void bgr_to_lab_planes_scalar(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                              std::uint8_t* a, std::uint8_t* b) {
    using namespace lab_tables;
    constexpr int l_scale = (116 * 255 + 50) / 100;
    constexpr int l_shift = -((16 * 255 * (1 << 15) + 50) / 100);
    for (std::size_t i = 0; i < n; ++i) {
        const int cb = kGamma[bgr[3 * i]], cg = kGamma[bgr[3 * i + 1]], cr = kGamma[bgr[3 * i + 2]];
        const int fx = kCbrt[descale(cb * kFwd[0] + cg * kFwd[1] + cr * kFwd[2], 12)];
        const int fy = kCbrt[descale(cb * kFwd[3] + cg * kFwd[4] + cr * kFwd[5], 12)];
        const int fz = kCbrt[descale(cb * kFwd[6] + cg * kFwd[7] + cr * kFwd[8], 12)];
        l[i] = clamp_u8(descale(l_scale * fy + l_shift, 15));
        a[i] = clamp_u8(descale(500 * (fx - fy) + 128 * (1 << 15), 15));
        b[i] = clamp_u8(descale(200 * (fy - fz) + 128 * (1 << 15), 15));
    }
}

void lab_planes_to_bgr_scalar(const std::uint8_t* l, const std::uint8_t* a,
                              const std::uint8_t* b, std::size_t n, std::uint8_t* out_b,
                              std::uint8_t* out_g, std::uint8_t* out_r) {
    using namespace lab_tables;
    const int* xz = ab_to_xz().data();
    for (std::size_t i = 0; i < n; ++i) {
        const int y = kLToYF[l[i] * 2], ify = kLToYF[l[i] * 2 + 1];
        const int adiv = ((5 * a[i] * 53687 + (1 << 7)) >> 13) - 128 * kBase / 500;
        const int bdiv = ((b[i] * 41943 + (1 << 4)) >> 9) - 128 * kBase / 200 + 1;
        const int x = xz[ify + adiv - kMinAB], z = xz[ify - bdiv - kMinAB];
        const int ro = std::clamp(descale(kInv[0] * x + kInv[1] * y + kInv[2] * z, 14), 0, 4095);
        const int go = std::clamp(descale(kInv[3] * x + kInv[4] * y + kInv[5] * z, 14), 0, 4095);
        const int bo = std::clamp(descale(kInv[6] * x + kInv[7] * y + kInv[8] * z, 14), 0, 4095);
        out_b[i] = clamp_u8(kInvGamma[bo]);
        out_g[i] = clamp_u8(kInvGamma[go]);
        out_r[i] = clamp_u8(kInvGamma[ro]);
    }
}

namespace {

// pick_kernels for the families whose AVX-512 flavour needs VBMI too: without it, AVX2.
template <class Kernels>
Kernels pick_vbmi_kernels(Isa cap, const Kernels& scalar, const Kernels& avx2,
                          const Kernels& avx512_vbmi) {
    return pick_kernels(cap, scalar, avx2, cpu_has_avx512_vbmi() ? avx512_vbmi : avx2);
}

}  // namespace

LabKernels lab_kernels(Isa cap) {
    return pick_vbmi_kernels(cap, LabKernels{bgr_to_lab_planes_scalar, lab_planes_to_bgr_scalar},
                             LabKernels{bgr_to_lab_planes_avx2, lab_planes_to_bgr_avx2},
                             LabKernels{bgr_to_lab_planes_avx512, lab_planes_to_bgr_avx512});
}

}  // namespace detail

void clahe_build_tables(const std::uint8_t* image, int height, int width, double clip_limit,
                        int tiles_x, int tiles_y, int threads, ClaheTables& t) {
    check_clahe_args(image, height, width, clip_limit, tiles_x, tiles_y);
    t.width = width;
    t.height = height;
    t.tiles_x = tiles_x;
    t.tiles_y = tiles_y;
    // OpenCV pads by (tiles - size % tiles) in BOTH directions as soon as either one does not
    // divide, even when the other does (then it adds a whole extra tile's worth of rows/cols).
    const bool divisible = width % tiles_x == 0 && height % tiles_y == 0;
    const long long ext_w = divisible ? width : width + tiles_x - width % tiles_x;
    const long long ext_h = divisible ? height : height + tiles_y - height % tiles_y;
    t.tile_width = static_cast<int>(ext_w / tiles_x);
    t.tile_height = static_cast<int>(ext_h / tiles_y);
    const long long tile_area = static_cast<long long>(t.tile_width) * t.tile_height;
    require(tile_area <= INT_MAX, "image is too large for one tile");
    const int tile_total = static_cast<int>(tile_area);
    const float lut_scale = 255.0f / static_cast<float>(tile_total);
    int clip = 0;
    if (clip_limit > 0.0) {
        const double c = clip_limit * tile_total / 256;
        // Counts never exceed tile_total, so a larger limit clips nothing; capping it avoids an
        // overflowing conversion for huge limits without changing the result.
        clip = c >= static_cast<double>(tile_total) ? tile_total : static_cast<int>(c);
        clip = std::max(clip, 1);
    }

    // Source row / column of every padded coordinate.
    std::vector<int> row_of(static_cast<std::size_t>(ext_h)), col_of(static_cast<std::size_t>(ext_w));
    for (long long y = 0; y < ext_h; ++y) row_of[y] = reflect101(static_cast<int>(y), height);
    for (long long x = 0; x < ext_w; ++x) col_of[x] = reflect101(static_cast<int>(x), width);

    const int n_tiles = tiles_x * tiles_y;
    t.lut.assign(static_cast<std::size_t>(n_tiles) * 256, 0);
    pool::parallel_for_dynamic(static_cast<std::size_t>(n_tiles), threads, 1, [&](std::size_t b, std::size_t e) {
        // Four interleaved histograms break the store-to-load dependency of equal neighbours.
        std::vector<std::uint32_t> hist4(4 * 256);
        int hist[256];
        for (std::size_t k = b; k < e; ++k) {
            const int ty = static_cast<int>(k) / tiles_x, tx = static_cast<int>(k) % tiles_x;
            const int x0 = tx * t.tile_width, x1 = x0 + t.tile_width;
            const int y0 = ty * t.tile_height, y1 = y0 + t.tile_height;
            const int x_direct_end = std::min(x1, width);
            std::fill(hist4.begin(), hist4.end(), 0u);
            std::uint32_t* h0 = hist4.data();
            std::uint32_t* h1 = h0 + 256;
            std::uint32_t* h2 = h1 + 256;
            std::uint32_t* h3 = h2 + 256;
            for (int y = y0; y < y1; ++y) {
                const std::uint8_t* row = image + static_cast<std::size_t>(row_of[y]) * width;
                int x = x0;
                for (; x + 4 <= x_direct_end; x += 4) {
                    h0[row[x]]++;
                    h1[row[x + 1]]++;
                    h2[row[x + 2]]++;
                    h3[row[x + 3]]++;
                }
                for (; x < x_direct_end; ++x) h0[row[x]]++;
                for (x = std::max(x0, width); x < x1; ++x) h0[row[col_of[x]]]++;
            }
            for (int i = 0; i < 256; ++i) hist[i] = static_cast<int>(h0[i] + h1[i] + h2[i] + h3[i]);

            if (clip > 0) {
                int clipped = 0;
                for (int i = 0; i < 256; ++i) {
                    if (hist[i] > clip) {
                        clipped += hist[i] - clip;
                        hist[i] = clip;
                    }
                }
                const int batch = clipped / 256;
                int residual = clipped - batch * 256;
                for (int i = 0; i < 256; ++i) hist[i] += batch;
                if (residual != 0) {
                    const int step = std::max(256 / residual, 1);
                    for (int i = 0; i < 256 && residual > 0; i += step, --residual) hist[i]++;
                }
            }
            std::uint8_t* lut = t.lut.data() + k * 256;
            int sum = 0;
            for (int i = 0; i < 256; ++i) {
                sum += hist[i];
                lut[i] = round_to_u8(static_cast<float>(sum) * lut_scale);
            }
        }
    });

    // Horizontal interpolation tables, with OpenCV's float arithmetic.
    t.column_segment.resize(static_cast<std::size_t>(width));
    t.column_weight.resize(static_cast<std::size_t>(width));
    t.column_weight_complement.resize(static_cast<std::size_t>(width));
    const float inv_tw = 1.0f / static_cast<float>(t.tile_width);
    for (int x = 0; x < width; ++x) {
        const float prod = static_cast<float>(x) * inv_tw;
        const float txf = prod - 0.5f;
        const int tx1 = static_cast<int>(std::floor(txf));
        const float xa = txf - static_cast<float>(tx1);
        t.column_weight[x] = xa;
        t.column_weight_complement[x] = 1.0f - xa;
        t.column_segment[x] = std::min(tx1 + 1, tiles_x);  // tx1 is in [-1, tiles_x - 1]
    }
    // column_segment is non-decreasing: record where each segment starts.
    t.segment_begin.assign(static_cast<std::size_t>(tiles_x) + 2, width);
    for (int x = width - 1; x >= 0; --x) t.segment_begin[t.column_segment[x]] = x;
    for (int s = tiles_x; s >= 0; --s)
        t.segment_begin[s] = std::min(t.segment_begin[s], t.segment_begin[s + 1]);
}

namespace detail {

void clahe_pack_band(const ClaheTables& t, int band, std::uint32_t* packed) {
    const int ty1 = std::max(band - 1, 0), ty2 = std::min(band, t.tiles_y - 1);
    const std::uint8_t* plane1 = t.lut.data() + static_cast<std::size_t>(ty1) * t.tiles_x * 256;
    const std::uint8_t* plane2 = t.lut.data() + static_cast<std::size_t>(ty2) * t.tiles_x * 256;
    for (int s = 0; s <= t.tiles_x; ++s) {
        const int tx1 = std::max(s - 1, 0), tx2 = std::min(s, t.tiles_x - 1);
        const std::uint8_t* a = plane1 + tx1 * 256;
        const std::uint8_t* b = plane1 + tx2 * 256;
        const std::uint8_t* c = plane2 + tx1 * 256;
        const std::uint8_t* d = plane2 + tx2 * 256;
        std::uint32_t* out = packed + static_cast<std::size_t>(s) * 256;
        for (int v = 0; v < 256; ++v)
            out[v] = std::uint32_t{a[v]} | (std::uint32_t{b[v]} << 8) |
                     (std::uint32_t{c[v]} << 16) | (std::uint32_t{d[v]} << 24);
    }
}

void clahe_row_scalar(const ClaheTables& t, const std::uint32_t* packed, float ya, float ya1,
                      const std::uint8_t* src, std::uint8_t* dst) {
    const std::int32_t* seg = t.column_segment.data();
    const float* xa = t.column_weight.data();
    const float* xa1 = t.column_weight_complement.data();
    for (int x = 0; x < t.width; ++x) {
        const std::uint32_t w = packed[seg[x] * 256 + src[x]];
        const float l11 = static_cast<float>(w & 0xFF), l12 = static_cast<float>((w >> 8) & 0xFF);
        const float l21 = static_cast<float>((w >> 16) & 0xFF), l22 = static_cast<float>(w >> 24);
        // (lut11*xa1 + lut12*xa)*ya1 + (lut21*xa1 + lut22*xa)*ya, as OpenCV evaluates it.
        const float top = l11 * xa1[x] + l12 * xa[x];
        const float bottom = l21 * xa1[x] + l22 * xa[x];
        dst[x] = round_to_u8(top * ya1 + bottom * ya);
    }
}

ClaheRowKernels clahe_row_kernels(Isa cap) {
    return pick_vbmi_kernels(cap, ClaheRowKernels{clahe_row_scalar, nullptr},
                             ClaheRowKernels{clahe_row_avx2, nullptr},
                             ClaheRowKernels{nullptr, clahe_row_avx512});
}

}  // namespace detail

ClaheRowApplier::ClaheRowApplier(const ClaheTables& tables, Isa isa)
    : tables_(tables),
      packed_(static_cast<std::size_t>(tables.tiles_x + 1) * 256),
      inv_tile_height_(1.0f / static_cast<float>(tables.tile_height)),
      kernels_(detail::clahe_row_kernels(isa)) {}

void ClaheRowApplier::apply(int y, const std::uint8_t* src, std::uint8_t* dst) {
    const float prod = static_cast<float>(y) * inv_tile_height_;
    const float tyf = prod - 0.5f;
    const int ty1 = static_cast<int>(std::floor(tyf));
    const float ya = tyf - static_cast<float>(ty1);
    const float ya1 = 1.0f - ya;
    const int band = std::min(ty1 + 1, tables_.tiles_y);
    if (kernels_.permute_row != nullptr) {
        kernels_.permute_row(tables_, band, ya, ya1, src, dst);
        return;
    }
    if (band != band_) {
        detail::clahe_pack_band(tables_, band, packed_.data());
        band_ = band;
    }
    kernels_.packed_row(tables_, packed_.data(), ya, ya1, src, dst);
}

void clahe_apply_rows(const ClaheTables& t, const std::uint8_t* image, int row_begin, int row_end,
                      std::uint8_t* out) {
    ClaheRowApplier applier(t);
    for (int y = row_begin; y < row_end; ++y) {
        const std::size_t offset = static_cast<std::size_t>(y) * t.width;
        applier.apply(y, image + offset, out + offset);
    }
}

void clahe_gray(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
                int tiles_y, std::uint8_t* out, int threads) {
    require(out != nullptr, "out must not be null");
    // Below ~128k pixels a second thread costs more to start than it saves.
    if (static_cast<long long>(height) * width < (1LL << 17)) threads = 1;
    ClaheTables tables;
    clahe_build_tables(image, height, width, clip_limit, tiles_x, tiles_y, threads, tables);
    // Bands of whole tiles per chunk keep the packed-table rebuilds rare.
    pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t b, std::size_t e) {
        clahe_apply_rows(tables, image, static_cast<int>(b), static_cast<int>(e), out);
    });
}

void clahe_bgr(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
               int tiles_y, std::uint8_t* out, int threads) {
    require(out != nullptr, "out must not be null");
    check_clahe_args(image, height, width, clip_limit, tiles_x, tiles_y);
    const std::size_t n = static_cast<std::size_t>(height) * width;
    if (n < (std::size_t{1} << 16)) threads = 1;
    // Every byte is written by the conversion below: no value-initialisation (a serial pass).
    std::unique_ptr<std::uint8_t[]> planes(new std::uint8_t[n * 3]);
    std::uint8_t* l = planes.get();
    std::uint8_t* a = l + n;
    std::uint8_t* b = a + n;
    const detail::LabKernels lab = detail::lab_kernels(best_isa());
    pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t r0, std::size_t r1) {
        const std::size_t p0 = r0 * width, p1 = r1 * width;
        lab.to_lab(image + p0 * 3, p1 - p0, l + p0, a + p0, b + p0);
    });
    ClaheTables tables;
    clahe_build_tables(l, height, width, clip_limit, tiles_x, tiles_y, threads, tables);
    pool::parallel_for_dynamic(static_cast<std::size_t>(height), threads, 16, [&](std::size_t r0, std::size_t r1) {
        ClaheRowApplier applier(tables);
        std::vector<std::uint8_t> row(static_cast<std::size_t>(width) * 4);
        std::uint8_t* lr = row.data();
        std::uint8_t* bo = lr + width;
        std::uint8_t* go = bo + width;
        std::uint8_t* ro = go + width;
        for (std::size_t y = r0; y < r1; ++y) {
            const std::size_t p0 = y * width;
            applier.apply(static_cast<int>(y), l + p0, lr);
            lab.to_bgr(lr, a + p0, b + p0, static_cast<std::size_t>(width), bo, go, ro);
            std::uint8_t* dst = out + p0 * 3;
            for (int x = 0; x < width; ++x) {
                dst[3 * x] = bo[x];
                dst[3 * x + 1] = go[x];
                dst[3 * x + 2] = ro[x];
            }
        }
    });
}

}  // namespace autoweld
