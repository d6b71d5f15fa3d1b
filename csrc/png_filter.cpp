// PNG scanline reconstruction; see png_filter.hpp. Each row is rebuilt into a scratch row (the
// filters of the next row read it as "prior"), then copied out, swapped to BGR when asked.
#include "png_filter.hpp"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace autoweld {

namespace {

// The Paeth predictor of PNG section 9.4: whichever of left, above, upper-left is closest to
// left + above - upper-left, ties broken in that order. Written with selects, not branches: on
// camera noise the choice is unpredictable, and mispredicted branches cost more than the rest.
inline std::uint8_t paeth(int left, int above, int upper_left) {
    const int pa = std::abs(above - upper_left);
    const int pb = std::abs(left - upper_left);
    const int pc = std::abs(left + above - 2 * upper_left);
    const int b_or_c = pb <= pc ? above : upper_left;
    return static_cast<std::uint8_t>((pa <= pb) & (pa <= pc) ? left : b_or_c);
}

// One scanline: cur = reconstruction of the filtered bytes x (n bytes, bpp bytes per pixel)
// given the reconstructed prior row. Returns false for an unknown filter type.
template <int bpp>
bool unfilter_row(int type, const std::uint8_t* x, const std::uint8_t* prior, std::uint8_t* cur,
                  std::size_t n) {
    switch (type) {
        case 0:
            std::memcpy(cur, x, n);
            return true;
        case 1:
            for (std::size_t i = 0; i < bpp && i < n; ++i) cur[i] = x[i];
            for (std::size_t i = bpp; i < n; ++i)
                cur[i] = static_cast<std::uint8_t>(x[i] + cur[i - bpp]);
            return true;
        case 2:
            for (std::size_t i = 0; i < n; ++i) cur[i] = static_cast<std::uint8_t>(x[i] + prior[i]);
            return true;
        case 3:
            for (std::size_t i = 0; i < bpp && i < n; ++i)
                cur[i] = static_cast<std::uint8_t>(x[i] + (prior[i] >> 1));
            for (std::size_t i = bpp; i < n; ++i)
                cur[i] = static_cast<std::uint8_t>(x[i] + ((cur[i - bpp] + prior[i]) >> 1));
            return true;
        case 4:
            for (std::size_t i = 0; i < bpp && i < n; ++i)
                cur[i] = static_cast<std::uint8_t>(x[i] + prior[i]);  // paeth(0, b, 0) = b
            for (std::size_t i = bpp; i < n; ++i)
                cur[i] = static_cast<std::uint8_t>(
                    x[i] + paeth(cur[i - bpp], prior[i], prior[i - bpp]));
            return true;
        default:
            return false;
    }
}

}  // namespace

void png_unfilter(const std::uint8_t* data, std::size_t size, int height, int width,
                  int channels, bool swap_rgb, std::uint8_t* out) {
    require(height >= 1 && width >= 1, "png_unfilter: height and width must be >= 1");
    require(channels == 1 || channels == 3, "png_unfilter: channels must be 1 or 3");
    const std::size_t n = static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
    const std::size_t stride = n + 1;
    require(size / stride == static_cast<std::size_t>(height) && size % stride == 0,
            "png_unfilter: " + std::to_string(size) + " bytes of scanlines, expected " +
                std::to_string(static_cast<std::size_t>(height) * stride));
    std::vector<std::uint8_t> rows(2 * n, 0);  // prior (zeros above the first row), current
    std::uint8_t* prior = rows.data();
    std::uint8_t* cur = rows.data() + n;
    for (int r = 0; r < height; ++r) {
        const std::uint8_t* line = data + static_cast<std::size_t>(r) * stride;
        const bool ok = channels == 1 ? unfilter_row<1>(line[0], line + 1, prior, cur, n)
                                      : unfilter_row<3>(line[0], line + 1, prior, cur, n);
        if (!ok)
            throw std::invalid_argument("png_unfilter: row " + std::to_string(r) +
                                        " has filter type " + std::to_string(line[0]) +
                                        " (PNG defines 0 to 4)");
        std::uint8_t* dst = out + static_cast<std::size_t>(r) * n;
        if (channels == 3 && swap_rgb) {
            for (std::size_t i = 0; i < n; i += 3) {
                dst[i] = cur[i + 2];
                dst[i + 1] = cur[i + 1];
                dst[i + 2] = cur[i];
            }
        } else {
            std::memcpy(dst, cur, n);
        }
        std::swap(prior, cur);
    }
}

}  // namespace autoweld
