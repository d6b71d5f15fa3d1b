// Fused preprocessing of one image for the engine: CLAHE -> Gaussian smoothing -> area resize
// to size x size -> BGR to RGB -> (x/255 - mean)/std -> float32 CHW. Python-free.
//
// Blur and resize are both separable linear maps, so per axis they are composed into one banded
// matrix (OpenCV's fixed-point Gaussian taps, reflect-101 borders, INTER_AREA weights or, when
// upscaling, INTER_AREA's bilinear weights) and the image is read once: every source row is
// produced on the fly (CLAHE LUT interpolation, Lab round trip for colour), filtered
// horizontally, and the vertical pass normalises while writing CHW. Nothing is rounded to 8 bits
// between the stages, so the result stays within one grey level of OpenCV's chain, which rounds
// after each.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "isa.hpp"

namespace autoweld {

struct PreprocessConfig {
    int size = 224;
    bool clahe = true;
    double clip_limit = 2.0;
    int tiles_x = 8, tiles_y = 8;
    double sigma = 0.0;  // 0 = no smoothing
    std::array<double, 3> mean{0.485, 0.456, 0.406};  // RGB order
    std::array<double, 3> std{0.229, 0.224, 0.225};
    int threads = 0;  // <= 0: all hardware threads
    Isa isa = best_isa();  // the highest ISA its kernels may use (same result on every one)
};

// One output index's contiguous band of source weights.
struct AxisFilter {
    int out_size = 0, max_taps = 0;
    std::vector<int> first;     // first source index per output
    std::vector<int> taps;      // number of weights per output
    std::vector<float> weight;  // out_size x max_taps, zero padded
};

// OpenCV's 8-bit Gaussian kernel for GaussianBlur(ksize=(0,0), sigmaX=sigma): size
// round(6*sigma+1)|1, taps in units of 1/256 (error-diffused, summing to exactly 256).
std::vector<int> gaussian_kernel_q8(double sigma);

// Composite per-axis filter: Gaussian (sigma, 0 = none) followed by cv2.resize INTER_AREA from
// `in` to `out` samples. `area` selects INTER_AREA's averaging (both axes downscale) versus its
// bilinear branch (taken by OpenCV for both axes as soon as either upscales).
AxisFilter make_axis_filter(int in, int out, double sigma, bool area);

// cv2.GaussianBlur(image, (0, 0), sigma) on 8-bit images, bit-exact (fixed-point taps,
// reflect-101 borders, rounding half up). Used before upscaling.
void gaussian_blur_u8(const std::uint8_t* image, int height, int width, int channels,
                      double sigma, std::uint8_t* out, int threads);

// image: height x width x channels (1 or 3, BGR) uint8; out: 3 x size x size float32,
// caller-allocated. Throws std::invalid_argument naming the bad argument.
void preprocess(const std::uint8_t* image, int height, int width, int channels,
                const PreprocessConfig& config, float* out);

}  // namespace autoweld
