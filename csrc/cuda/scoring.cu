// Scoring on the device: PatchCore re-weighting, map-head image scores, the anomaly map
// (bilinear upsampling + separable Gaussian, the CPU anomaly_map's definition), Platt and
// fusion. One block per image where a reduction over the image is needed.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

#include "../anomaly_map.hpp"
#include "../common.hpp"
#include "gpu.cuh"

namespace autoweld {
namespace gpu {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxNeighbours = 64;  // PatchCore's b (anomalib uses 9)

// Block-wide argmax of distances[p * k] over patches; first on ties (like the CPU).
__global__ void patchcore_kernel(const float* __restrict__ embeddings, int patches, int dim,
                                 const float* __restrict__ distances,
                                 const std::int64_t* __restrict__ indices, int k,
                                 const float* __restrict__ bank, std::int64_t bank_rows,
                                 const std::int64_t* __restrict__ neighbours, int b,
                                 double* __restrict__ scores) {
    __shared__ float best_v[kBlock];
    __shared__ int best_p[kBlock];
    __shared__ double dist[kMaxNeighbours];
    __shared__ double partial[kBlock];
    const int image = blockIdx.x, tid = threadIdx.x;
    const float* dcol = distances + static_cast<std::size_t>(image) * patches * k;
    float v = -FLT_MAX;
    int p = patches;
    for (int i = tid; i < patches; i += kBlock) {
        const float x = dcol[static_cast<std::size_t>(i) * k];
        if (x > v) {  // strided ascending i: keeps the first maximum of this thread
            v = x;
            p = i;
        }
    }
    best_v[tid] = v;
    best_p[tid] = p;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s /= 2) {
        if (tid < s) {
            const float ov = best_v[tid + s];
            const int op = best_p[tid + s];
            if (ov > best_v[tid] || (ov == best_v[tid] && op < best_p[tid])) {
                best_v[tid] = ov;
                best_p[tid] = op;
            }
        }
        __syncthreads();
    }
    const int star = best_p[0];
    const double s_star = best_v[0];
    // NaN engine output leaves no maximum or no neighbour (-1): the score is NaN, and the
    // caller fails the image (its finite flag is 0); nothing is read out of bounds.
    if (star >= patches) {
        if (tid == 0) scores[image] = nan("");
        return;
    }
    const std::int64_t m_star =
        indices[(static_cast<std::size_t>(image) * patches + star) * k];
    if (m_star < 0 || m_star >= bank_rows) {
        if (tid == 0) scores[image] = nan("");
        return;
    }
    const std::int64_t* support = neighbours + static_cast<std::size_t>(m_star) * b;
    const float* e = embeddings + (static_cast<std::size_t>(image) * patches + star) * dim;
    for (int j = 0; j < b; ++j) {
        const float* r = bank + static_cast<std::size_t>(support[j]) * dim;
        double s = 0.0;
        for (int t = tid; t < dim; t += kBlock) {
            const double diff = static_cast<double>(e[t]) - r[t];
            s += diff * diff;
        }
        partial[tid] = s;
        __syncthreads();
        for (int h = kBlock / 2; h > 0; h /= 2) {
            if (tid < h) partial[tid] += partial[tid + h];
            __syncthreads();
        }
        if (tid == 0) dist[j] = sqrt(partial[0]);
        __syncthreads();
    }
    if (tid == 0) {
        double top = dist[0];
        for (int j = 1; j < b; ++j) top = fmax(top, dist[j]);
        double total = 0.0;
        for (int j = 0; j < b; ++j) total += exp(dist[j] - top);
        const double weight = 1.0 - exp(dist[0] - top) / total;
        scores[image] = weight * s_star;
    }
}

__global__ void max_kernel(const float* __restrict__ maps, std::size_t per_image,
                           double* __restrict__ out) {
    __shared__ float best[kBlock];
    const float* m = maps + static_cast<std::size_t>(blockIdx.x) * per_image;
    float v = -FLT_MAX;
    for (std::size_t i = threadIdx.x; i < per_image; i += kBlock) v = fmaxf(v, m[i]);
    best[threadIdx.x] = v;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) best[threadIdx.x] = fmaxf(best[threadIdx.x], best[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = best[0];
}

__global__ void finite_kernel(const float* __restrict__ values, std::size_t per_image,
                              int* __restrict__ flags) {
    __shared__ int bad;
    if (threadIdx.x == 0) bad = 0;
    __syncthreads();
    const float* m = values + static_cast<std::size_t>(blockIdx.x) * per_image;
    int mine = 0;
    for (std::size_t i = threadIdx.x; i < per_image; i += kBlock) mine |= !isfinite(m[i]);
    if (mine) atomicOr(&bad, 1);
    __syncthreads();
    if (threadIdx.x == 0) flags[blockIdx.x] = bad ? 0 : 1;
}

// torch 'reflect' padding folded until inside (== the CPU reflect101).
__device__ __forceinline__ int reflect101(int p, int len) {
    if (len == 1) return 0;
    while (p < 0 || p >= len) p = p < 0 ? -p : 2 * len - 2 - p;
    return p;
}

struct Taps {
    float w[2 * kMaxBlurRadius + 1];
};

// torch bilinear, align_corners=False, one axis: source rows and weights of output d.
__device__ __forceinline__ void linear_source(int d, int in, int out, int& i0, int& i1,
                                              float& w0, float& w1) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    float src = scale * (static_cast<float>(d) + 0.5f) - 0.5f;
    if (src < 0.f) src = 0.f;
    i0 = min(static_cast<int>(src), in - 1);
    const float l1 = src - static_cast<float>(i0);
    i1 = i0 + (i0 < in - 1 ? 1 : 0);
    w1 = l1;
    w0 = 1.f - l1;
}

__device__ __forceinline__ float upsampled(const float* src, int width, int y0, int y1, float wy0,
                                           float wy1, int x, int in_w, int out_w) {
    int x0, x1;
    float wx0, wx1;
    linear_source(x, in_w, out_w, x0, x1, wx0, wx1);
    const float* r0 = src + static_cast<std::size_t>(y0) * width;
    const float* r1 = src + static_cast<std::size_t>(y1) * width;
    return wy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + wy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
}

// Upsample + horizontal blur: one thread per output pixel of `stage`.
__global__ void upsample_hblur_kernel(const float* __restrict__ scores, int count, int height,
                                      int width, int out_h, int out_w, Taps taps, int radius,
                                      float* __restrict__ stage) {
    const std::size_t idx = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::size_t total = static_cast<std::size_t>(count) * out_h * out_w;
    if (idx >= total) return;
    const int x = static_cast<int>(idx % out_w);
    const int y = static_cast<int>((idx / out_w) % out_h);
    const int n = static_cast<int>(idx / (static_cast<std::size_t>(out_w) * out_h));
    const float* src = scores + static_cast<std::size_t>(n) * height * width;
    int y0, y1;
    float wy0, wy1;
    linear_source(y, height, out_h, y0, y1, wy0, wy1);
    float acc = 0.f;
    for (int t = -radius; t <= radius; ++t)
        acc += taps.w[t + radius] *
               upsampled(src, width, y0, y1, wy0, wy1, reflect101(x + t, out_w), width, out_w);
    stage[idx] = acc;
}

__global__ void vblur_kernel(const float* __restrict__ stage, int count, int out_h, int out_w,
                             Taps taps, int radius, float* __restrict__ out) {
    const std::size_t idx = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::size_t total = static_cast<std::size_t>(count) * out_h * out_w;
    if (idx >= total) return;
    const int x = static_cast<int>(idx % out_w);
    const int y = static_cast<int>((idx / out_w) % out_h);
    const std::size_t plane = static_cast<std::size_t>(idx / (static_cast<std::size_t>(out_w) * out_h)) *
                              out_h * out_w;
    float acc = 0.f;
    for (int t = -radius; t <= radius; ++t)
        acc += taps.w[t + radius] *
               stage[plane + static_cast<std::size_t>(reflect101(y + t, out_h)) * out_w + x];
    out[idx] = acc;
}

struct HeadParams {
    double a[8], b[8], w[8];
};

__device__ __forceinline__ double platt_one(double s, double a, double b) {
    const double z = a * s + b;
    if (z >= 0.0) {
        const double e = exp(-z);
        return e / (1.0 + e);
    }
    return 1.0 / (1.0 + exp(z));
}

__global__ void platt_fuse_kernel(const double* __restrict__ scores, int heads, int images,
                                  HeadParams params, double* __restrict__ probabilities,
                                  double* __restrict__ fused) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= images) return;
    double f = 0.0;
    for (int h = 0; h < heads; ++h) {
        const double p = platt_one(scores[h * images + i], params.a[h], params.b[h]);
        probabilities[h * images + i] = p;
        f += params.w[h] * p;
    }
    fused[i] = f;
}

__global__ void accumulate_platt_kernel(const float* __restrict__ map, std::size_t n, float a,
                                        float b, float w, float* __restrict__ fused) {
    const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float z = fminf(fmaxf(a * map[i] + b, -88.f), 88.f);
    fused[i] += w * (1.f / (1.f + expf(z)));
}

unsigned blocks_for(std::size_t n, int threads) {
    return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

void patchcore_scores(const float* d_embeddings, std::size_t images, std::size_t patches,
                      std::size_t dim, const float* d_distances, const std::int64_t* d_indices,
                      std::size_t k, const float* d_bank, std::size_t bank_rows,
                      const std::int64_t* d_neighbours, std::size_t b, double* d_scores,
                      cudaStream_t stream) {
    require(patches >= 1, "embeddings: no patches");
    require(dim >= 1, "embeddings: feature dimension must be at least 1");
    require(k >= 1, "distances: needs at least one column");
    require(bank_rows >= 1, "bank: memory bank is empty");
    require(b >= 1 && b <= static_cast<std::size_t>(kMaxNeighbours),
            "bank_neighbours: needs 1.." + std::to_string(kMaxNeighbours) + " columns on the GPU");
    if (images == 0) return;
    patchcore_kernel<<<static_cast<unsigned>(images), kBlock, 0, stream>>>(
        d_embeddings, static_cast<int>(patches), static_cast<int>(dim), d_distances, d_indices,
        static_cast<int>(k), d_bank, static_cast<std::int64_t>(bank_rows), d_neighbours,
        static_cast<int>(b), d_scores);
    check_cuda(cudaGetLastError(), "patchcore kernel launch");
}

void max_per_image(const float* d_maps, std::size_t images, std::size_t per_image,
                   double* d_out, cudaStream_t stream) {
    require(per_image >= 1, "maps must not be empty");
    if (images == 0) return;
    max_kernel<<<static_cast<unsigned>(images), kBlock, 0, stream>>>(d_maps, per_image, d_out);
    check_cuda(cudaGetLastError(), "max kernel launch");
}

void finite_per_image(const float* d_values, std::size_t images, std::size_t per_image,
                      int* d_flags, cudaStream_t stream) {
    require(per_image >= 1, "values must not be empty");
    if (images == 0) return;
    finite_kernel<<<static_cast<unsigned>(images), kBlock, 0, stream>>>(d_values, per_image,
                                                                        d_flags);
    check_cuda(cudaGetLastError(), "finite kernel launch");
}

void anomaly_map(const float* d_scores, int count, int height, int width, int out_height,
                 int out_width, double sigma, float* d_out, float* d_scratch,
                 cudaStream_t stream) {
    require(d_scores != nullptr && d_out != nullptr, "patch_scores and out must not be null");
    require(count >= 1 && height >= 1 && width >= 1, "patch_scores must not be empty");
    require(out_height >= 1 && out_width >= 1, "out_size must be >= 1 in each direction");
    const std::vector<float> kernel = anomaly_gaussian_kernel(sigma);  // checks sigma
    const int radius = static_cast<int>(kernel.size() / 2);
    require(radius <= kMaxBlurRadius,
            "sigma too large for the GPU blur (radius " + std::to_string(radius) + " > " +
                std::to_string(kMaxBlurRadius) + ")");
    const bool blur = radius > 0;
    require(!blur || d_scratch != nullptr, "scratch must not be null when sigma > 0");
    Taps taps{};
    for (std::size_t t = 0; t < kernel.size(); ++t) taps.w[t] = kernel[t];
    const std::size_t total = static_cast<std::size_t>(count) * out_height * out_width;
    const unsigned blocks = blocks_for(total, kBlock);
    upsample_hblur_kernel<<<blocks, kBlock, 0, stream>>>(d_scores, count, height, width,
                                                         out_height, out_width, taps, radius,
                                                         blur ? d_scratch : d_out);
    check_cuda(cudaGetLastError(), "anomaly map upsample kernel launch");
    if (!blur) return;
    vblur_kernel<<<blocks, kBlock, 0, stream>>>(d_scratch, count, out_height, out_width, taps,
                                                radius, d_out);
    check_cuda(cudaGetLastError(), "anomaly map blur kernel launch");
}

void platt_fuse(const double* d_scores, std::size_t heads, std::size_t images, const double* a,
                const double* b, const double* weights, double* d_probabilities,
                double* d_fused, cudaStream_t stream) {
    require(heads >= 1 && heads <= 8, "platt_fuse: 1..8 heads");
    HeadParams params{};
    double total = 0.0;
    for (std::size_t h = 0; h < heads; ++h) {
        require(std::isfinite(a[h]) && std::isfinite(b[h]), "Platt a and b must be finite");
        require(std::isfinite(weights[h]) && weights[h] >= 0.0,
                "weights must be finite and non-negative");
        params.a[h] = a[h];
        params.b[h] = b[h];
        params.w[h] = weights[h];
        total += weights[h];
    }
    require(std::fabs(total - 1.0) <= 1e-6,
            "weights must sum to 1 (within 1e-6), got " + std::to_string(total));
    if (images == 0) return;
    platt_fuse_kernel<<<blocks_for(images, 128), 128, 0, stream>>>(
        d_scores, static_cast<int>(heads), static_cast<int>(images), params, d_probabilities,
        d_fused);
    check_cuda(cudaGetLastError(), "platt/fuse kernel launch");
}

void accumulate_platt_map(const float* d_map, std::size_t n, double a, double b, double weight,
                          float* d_fused_map, cudaStream_t stream) {
    require(std::isfinite(a) && std::isfinite(b), "Platt a and b must be finite");
    if (n == 0) return;
    accumulate_platt_kernel<<<blocks_for(n, kBlock), kBlock, 0, stream>>>(
        d_map, n, static_cast<float>(a), static_cast<float>(b), static_cast<float>(weight),
        d_fused_map);
    check_cuda(cudaGetLastError(), "platt map kernel launch");
}

}  // namespace gpu
}  // namespace autoweld
