// PNG scanline reconstruction (the five filter types of the PNG specification, section 9) for
// 8-bit grey and 8-bit RGB images that are not interlaced: the inflated IDAT stream in, the
// pixels out. The runtime's PNG fast path (python/autoweld/runtime/decode.py) inflates with
// libdeflate and reconstructs here; the result is the same bytes libpng (OpenCV) produces.
// Python-free.
#pragma once

#include <cstddef>
#include <cstdint>

namespace autoweld {

// data: `height` scanlines, each one filter-type byte followed by width * channels bytes (size
// must be exactly height * (1 + width * channels)). channels: 1 (grey) or 3 (RGB). out:
// height * width * channels bytes, caller-allocated; with swap_rgb (channels 3) each pixel is
// written B, G, R as OpenCV's decoders return colour. Throws std::invalid_argument on a size
// mismatch or a filter-type byte above 4 (out is then partly written).
void png_unfilter(const std::uint8_t* data, std::size_t size, int height, int width,
                  int channels, bool swap_rgb, std::uint8_t* out);

}  // namespace autoweld
