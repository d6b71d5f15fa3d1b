// Anomaly map at input resolution: bilinear upsampling of the patch-score map exactly as
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False), then a separable
// Gaussian blur as anomalib's GaussianBlur2d (kernel 2*int(4*sigma+0.5)+1, normalised weights,
// reflect padding). Python-free.
#pragma once

#include <vector>

#include "isa.hpp"

namespace autoweld {

// The normalised 1-D Gaussian of anomalib (size 2*int(4*sigma+0.5)+1); {1} when sigma == 0.
std::vector<float> anomaly_gaussian_kernel(double sigma);

// scores: count maps of height x width (float32, finite); out: count maps of out_height x
// out_width, caller-allocated. sigma == 0 means no blur. threads <= 0: all hardware threads.
// isa: the blur's instruction set (the same bits from each; for tests).
void anomaly_map(const float* scores, int count, int height, int width, int out_height,
                 int out_width, double sigma, float* out, int threads, Isa isa = best_isa());

}  // namespace autoweld
