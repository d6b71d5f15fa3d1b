// PNG scanline reconstruction: each filter type by hand on tiny images, RGB -> BGR, refusals.
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "png_filter.hpp"

using Bytes = std::vector<std::uint8_t>;

static Bytes unfilter(const Bytes& data, int h, int w, int channels, bool swap = false) {
    Bytes out(static_cast<std::size_t>(h * w * channels), 0);
    autoweld::png_unfilter(data.data(), data.size(), h, w, channels, swap, out.data());
    return out;
}

int main() {
    // Grey 3 x 3: row 0 None, row 1 Sub, row 2 Up.
    CHECK((unfilter({0, 5, 6, 7, 1, 1, 2, 3, 2, 10, 10, 250}, 3, 3, 1) ==
           Bytes{5, 6, 7, 1, 3, 6, 11, 13, 0}));  // 6 + 250 wraps to 0
    // Average: first byte uses prior / 2 only; then (left + prior) / 2, floored.
    CHECK((unfilter({0, 9, 20, 3, 1, 1}, 2, 2, 1) == Bytes{9, 20, 5, 13}));  // 1+4, 1+(5+20)/2
    // Paeth on grey: row 1 over prior {10, 20}. First byte: predictor = above (10).
    // Second: a=12, b=20, c=10: p=22, pa=|22-12|=10, pb=2, pc=12 -> b=20; 3 + 20 = 23.
    CHECK((unfilter({0, 10, 20, 4, 2, 3}, 2, 2, 1) == Bytes{10, 20, 12, 23}));
    // Paeth ties go to left, then above: a=b=c -> left.
    CHECK((unfilter({0, 7, 7, 4, 0, 1}, 2, 2, 1) == Bytes{7, 7, 7, 8}));
    // RGB, two pixels, Sub with bpp 3; swapped to BGR on the way out.
    CHECK((unfilter({1, 1, 2, 3, 1, 1, 1}, 1, 2, 3) == Bytes{1, 2, 3, 2, 3, 4}));
    CHECK((unfilter({1, 1, 2, 3, 1, 1, 1}, 1, 2, 3, true) == Bytes{3, 2, 1, 4, 3, 2}));
    // Refusals: a filter type above 4, a stream of the wrong length, bad channels.
    CHECK_THROWS(unfilter({0, 1, 5, 1}, 2, 1, 1), std::invalid_argument);
    CHECK_THROWS(unfilter({0, 1, 0}, 2, 1, 1), std::invalid_argument);
    CHECK_THROWS(unfilter({0, 1, 1, 0, 1, 1}, 2, 1, 2), std::invalid_argument);
    return autoweld_test::finish("test_png");
}
