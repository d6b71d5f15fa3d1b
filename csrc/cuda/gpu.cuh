// The GPU half of the AutoWeld core: exact kNN with fused top-k, PatchCore re-weighting,
// anomaly-map upsampling + blur, Platt + fusion, all on device memory. Python-free.
//
// This header is plain host C++ (no device code, no CUDA-only syntax) so that bindings.cpp,
// compiled by the host compiler, can include it. Conventions as in the CPU core (faiss-style):
// pointer + counts, caller-allocated outputs, every pointer named d_* is DEVICE memory, work is
// enqueued on the caller's stream (nullptr: the legacy default stream) and the functions return
// without synchronising unless they say otherwise. Caller mistakes throw std::invalid_argument;
// CUDA failures throw std::runtime_error with the CUDA error string.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace autoweld {
namespace gpu {

// Largest k the fused top-k kernels support (each query keeps this many candidates, which are
// then re-ranked with exact float distances; see knn.cu).
constexpr std::size_t kMaxK = 16;
// Largest Gaussian radius of the anomaly-map blur on the device (sigma up to ~31.9).
constexpr int kMaxBlurRadius = 127;

// True when the CUDA runtime finds at least one usable device. Never throws.
bool cuda_available();
// Number of CUDA devices (0 when none or no driver). Never throws.
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90)" style description of a device.
std::string device_name(int device);

// Throws std::runtime_error("<what>: <cuda error>") when status is not cudaSuccess.
void check_cuda(cudaError_t status, const char* what);

// A device allocation owned by RAII (cudaMalloc / cudaFree). Grows, never shrinks.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
    // Makes the buffer at least `bytes` long (contents are lost when it grows).
    void reserve(std::size_t bytes);
    void* data() const { return ptr_; }
    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    std::size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
};

// ---- raw kernels (device pointers, caller's stream) -------------------------------------------

// d_out[i] = sum_d x[i, d]^2 for n rows of length dim.
void squared_norms(const float* d_x, std::size_t n, std::size_t dim, float* d_out,
                   cudaStream_t stream);

// Workspace bytes knn_search needs for nq queries against nb bank rows (see knn.cu).
std::size_t knn_workspace_bytes(std::size_t nq, std::size_t nb, int device);

// For each query row the k nearest bank rows (k <= kMaxK): Euclidean (not squared) distance
// ascending, equal distances keep the lower bank index first; same contract as the CPU
// autoweld::knn_search. The squared distances ||q||^2 + ||b||^2 - 2 q.b are computed by a tiled
// shared-memory kernel (float accumulation) with the top-kMaxK selection fused in; the
// candidates are then re-ranked by exact float distances computed from the differences, so the
// returned distances do not suffer the cancellation of the norm expansion. d_bank_norms: the
// bank's squared norms (squared_norms). d_workspace: at least knn_workspace_bytes(nq, nb).
// Values must be finite (not checked on the device: the caller checks where the data came from).
void knn_search(const float* d_queries, std::size_t nq, const float* d_bank,
                const float* d_bank_norms, std::size_t nb, std::size_t dim, std::size_t k,
                float* d_distances, std::int64_t* d_indices, void* d_workspace,
                std::size_t workspace_bytes, int device, cudaStream_t stream);

// PatchCore image score (the CPU autoweld::patchcore_score, one image per block), for `images`
// images whose embeddings are (images, patches, dim) and kNN results (images*patches, k).
// d_scores: one double per image. Bank rows named by indices/neighbours must be valid (they
// come from knn_search and the export's bank_neighbours; not re-checked on the device).
void patchcore_scores(const float* d_embeddings, std::size_t images, std::size_t patches,
                      std::size_t dim, const float* d_distances, const std::int64_t* d_indices,
                      std::size_t k, const float* d_bank, std::size_t bank_rows,
                      const std::int64_t* d_neighbours, std::size_t b, double* d_scores,
                      cudaStream_t stream);

// d_out[i] = max over the i-th map of `per_image` floats (image score of a map head).
void max_per_image(const float* d_maps, std::size_t images, std::size_t per_image,
                   double* d_out, cudaStream_t stream);

// d_flags[i] = 1 when the i-th run of `per_image` floats is all finite, else 0.
void finite_per_image(const float* d_values, std::size_t images, std::size_t per_image,
                      int* d_flags, cudaStream_t stream);

// Same definition as the CPU autoweld::anomaly_map (torch bilinear, align_corners=False, then
// anomalib's Gaussian with reflect padding; sigma == 0: no blur). d_scratch: count*out_h*out_w
// floats (unused when sigma == 0). Sigma's radius must be <= kMaxBlurRadius.
void anomaly_map(const float* d_scores, int count, int height, int width, int out_height,
                 int out_width, double sigma, float* d_out, float* d_scratch,
                 cudaStream_t stream);

// Platt per head and fusion: scores (heads x images, row-major), a/b/weights per head (host
// arrays, weights >= 0 summing to 1 within 1e-6, 0 = not fused). d_probabilities (heads x
// images) = 1 / (1 + exp(a*s + b)) in double without overflow; d_fused (images).
void platt_fuse(const double* d_scores, std::size_t heads, std::size_t images, const double* a,
                const double* b, const double* weights, double* d_probabilities,
                double* d_fused, cudaStream_t stream);

// d_fused_map[i] += weight * 1 / (1 + exp(clip(a*map[i] + b, -88, 88))) in float32, the
// Inspector's per-pixel Platt; n pixels.
void accumulate_platt_map(const float* d_map, std::size_t n, double a, double b, double weight,
                          float* d_fused_map, cudaStream_t stream);

// ---- the memory bank kept resident on one device ---------------------------------------------

enum class HeadKind { knn, map };

// A PatchCore memory bank (and its precomputed bank neighbours) copied once to a device, with
// its squared norms. Searches take device pointers and a stream; an internal workspace is grown
// on demand and guarded by a mutex, so one index may be shared by threads (calls serialise).
class GpuKnnIndex {
public:
    // host_bank (nb x dim) and host_neighbours (nb x b, may be nullptr with b == 0) are copied.
    GpuKnnIndex(const float* host_bank, std::size_t nb, std::size_t dim,
                const std::int64_t* host_neighbours, std::size_t b, int device);
    ~GpuKnnIndex();
    GpuKnnIndex(const GpuKnnIndex&) = delete;
    GpuKnnIndex& operator=(const GpuKnnIndex&) = delete;

    // knn_search against the resident bank; synchronises nothing.
    void search(const float* d_queries, std::size_t nq, std::size_t k, float* d_distances,
                std::int64_t* d_indices, cudaStream_t stream) const;
    // patchcore_scores against the resident bank + neighbours (needs neighbours).
    void score(const float* d_embeddings, std::size_t images, std::size_t patches,
               const float* d_distances, const std::int64_t* d_indices, std::size_t k,
               double* d_scores, cudaStream_t stream) const;

    std::size_t size() const { return nb_; }
    std::size_t dim() const { return dim_; }
    std::size_t neighbours() const { return b_; }
    int device() const { return device_; }
    const float* bank() const { return bank_.as<float>(); }

private:
    std::size_t nb_, dim_, b_;
    int device_;
    DeviceBuffer bank_, norms_, neighbours_;
    mutable DeviceBuffer workspace_;
    mutable std::mutex mutex_;
};

// One model head as the engine left it on the device.
struct GpuHead {
    HeadKind kind = HeadKind::knn;
    const float* d_output = nullptr;  // knn: (images, h*w, dim) embeddings; map: (images, h, w)
    const GpuKnnIndex* index = nullptr;  // knn heads only
    int feature_h = 0, feature_w = 0;
    double platt_a = 0.0, platt_b = 0.0;
    double weight = 0.0;  // fusion weight; 0: computed but not fused
};

// What gpu_score hands back to the host (small), in head order.
struct GpuScoreResult {
    std::vector<double> scores;         // heads x images
    std::vector<double> probabilities;  // heads x images
    std::vector<double> fused;          // images
    std::vector<int> finite;            // images: 0 when any head output of the image is NaN/Inf
};

// Device buffers gpu_score reuses from call to call.
struct GpuScoreWorkspace {
    DeviceBuffer distances, indices, patch_maps, full_map, scratch, scores, probabilities, fused,
        flags;
};

// Engine output -> image scores, probabilities, fused probability and (when d_fused_map is not
// null) the fused per-pixel probability map (images, out_size, out_size), all computed on the
// device from the head outputs in place; only the small result vectors are copied back (the
// call synchronises `stream` for them). Images whose outputs are not finite get flag 0 and
// score 0 (the caller fails them, as the CPU Inspector does).
GpuScoreResult gpu_score(const GpuHead* heads, std::size_t nheads, std::size_t images,
                         int out_size, double sigma, float* d_fused_map,
                         GpuScoreWorkspace& workspace, cudaStream_t stream);

}  // namespace gpu
}  // namespace autoweld
