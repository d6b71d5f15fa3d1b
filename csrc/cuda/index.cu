// Host side of the GPU path: device discovery, RAII buffers, the resident memory bank
// (GpuKnnIndex) and gpu_score, which runs a batch's heads from engine output to fused result
// without leaving the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common.hpp"
#include "../knn.hpp"
#include "gpu.cuh"

namespace autoweld {
namespace gpu {

void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                                 cudaGetErrorString(status) + ")");
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver / no device" error
        return 0;
    }
    return n;
}

bool cuda_available() { return device_count() > 0; }

std::string device_name(int device) {
    require(device >= 0 && device < device_count(),
            "device " + std::to_string(device) + " does not exist (" +
                std::to_string(device_count()) + " CUDA devices)");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
           std::to_string(prop.minor) + ")";
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) { reserve(bytes); }

DeviceBuffer::~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
        if (ptr_ != nullptr) cudaFree(ptr_);
        ptr_ = std::exchange(other.ptr_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
}

void DeviceBuffer::reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    if (ptr_ != nullptr) {
        check_cuda(cudaFree(ptr_), "cudaFree");
        ptr_ = nullptr;
        bytes_ = 0;
    }
    check_cuda(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    bytes_ = bytes;
}

namespace {

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceGuard() { cudaSetDevice(previous_); }

private:
    int previous_ = 0;
};

}  // namespace

GpuKnnIndex::GpuKnnIndex(const float* host_bank, std::size_t nb, std::size_t dim,
                         const std::int64_t* host_neighbours, std::size_t b, int device)
    : nb_(nb), dim_(dim), b_(b), device_(device) {
    require(nb >= 1, "bank: memory bank is empty");
    require(dim >= 1, "bank: feature dimension must be at least 1");
    require(host_bank != nullptr, "bank must not be null");
    require((host_neighbours == nullptr) == (b == 0),
            "bank_neighbours: pass both the array and its column count, or neither");
    require(device >= 0 && device < device_count(),
            "device " + std::to_string(device) + " does not exist (" +
                std::to_string(device_count()) + " CUDA devices)");
    require_finite(host_bank, nb * dim, "bank");
    for (std::size_t i = 0; i < nb * b; ++i)
        require(host_neighbours[i] >= 0 && static_cast<std::size_t>(host_neighbours[i]) < nb,
                "bank_neighbours: entry " + std::to_string(host_neighbours[i]) +
                    " is outside the bank (" + std::to_string(nb) + " rows)");
    DeviceGuard guard(device);
    bank_.reserve(nb * dim * sizeof(float));
    norms_.reserve(nb * sizeof(float));
    check_cuda(cudaMemcpy(bank_.data(), host_bank, nb * dim * sizeof(float),
                          cudaMemcpyHostToDevice),
               "copy bank to device");
    if (b > 0) {
        neighbours_.reserve(nb * b * sizeof(std::int64_t));
        check_cuda(cudaMemcpy(neighbours_.data(), host_neighbours,
                              nb * b * sizeof(std::int64_t), cudaMemcpyHostToDevice),
                   "copy bank neighbours to device");
    }
    squared_norms(bank_.as<float>(), nb, dim, norms_.as<float>(), nullptr);
    check_cuda(cudaDeviceSynchronize(), "bank norms");
}

GpuKnnIndex::~GpuKnnIndex() = default;

void GpuKnnIndex::search(const float* d_queries, std::size_t nq, std::size_t k,
                         float* d_distances, std::int64_t* d_indices,
                         cudaStream_t stream) const {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard guard(device_);
    const std::size_t need = knn_workspace_bytes(nq, nb_, device_);
    if (need > workspace_.bytes()) {
        // The old workspace may still be in use by work queued on `stream`.
        check_cuda(cudaStreamSynchronize(stream), "knn workspace resize");
        workspace_.reserve(need);
    }
    knn_search(d_queries, nq, bank_.as<float>(), norms_.as<float>(), nb_, dim_, k, d_distances,
               d_indices, workspace_.data(), workspace_.bytes(), device_, stream);
}

void GpuKnnIndex::score(const float* d_embeddings, std::size_t images, std::size_t patches,
                        const float* d_distances, const std::int64_t* d_indices, std::size_t k,
                        double* d_scores, cudaStream_t stream) const {
    require(b_ >= 1, "this index was built without bank_neighbours: it cannot score");
    DeviceGuard guard(device_);
    patchcore_scores(d_embeddings, images, patches, dim_, d_distances, d_indices, k,
                     bank_.as<float>(), nb_, neighbours_.as<std::int64_t>(), b_, d_scores,
                     stream);
}

GpuScoreResult gpu_score(const GpuHead* heads, std::size_t nheads, std::size_t images,
                         int out_size, double sigma, float* d_fused_map,
                         GpuScoreWorkspace& ws, cudaStream_t stream) {
    require(nheads >= 1 && nheads <= 8, "gpu_score: 1..8 heads");
    require(out_size >= 1, "out_size must be >= 1");
    GpuScoreResult result;
    if (images == 0) return result;
    std::size_t max_patches = 0;
    for (std::size_t h = 0; h < nheads; ++h) {
        const GpuHead& head = heads[h];
        require(head.d_output != nullptr, "head output pointer is null");
        require(head.feature_h >= 1 && head.feature_w >= 1, "feature_map must be >= 1x1");
        require(head.kind == HeadKind::map || head.index != nullptr,
                "a knn head needs its GpuKnnIndex");
        max_patches = std::max(max_patches, static_cast<std::size_t>(head.feature_h) *
                                                static_cast<std::size_t>(head.feature_w));
    }
    const std::size_t plane = static_cast<std::size_t>(out_size) * out_size;
    ws.distances.reserve(images * max_patches * sizeof(float));
    ws.indices.reserve(images * max_patches * sizeof(std::int64_t));
    ws.scores.reserve(nheads * images * sizeof(double));
    ws.probabilities.reserve(nheads * images * sizeof(double));
    ws.fused.reserve(images * sizeof(double));
    ws.flags.reserve(nheads * images * sizeof(int));
    if (d_fused_map != nullptr) {
        ws.full_map.reserve(images * plane * sizeof(float));
        ws.scratch.reserve(images * plane * sizeof(float));
        check_cuda(cudaMemsetAsync(d_fused_map, 0, images * plane * sizeof(float), stream),
                   "clear fused map");
    }
    double* scores = ws.scores.as<double>();
    int* flags = ws.flags.as<int>();
    std::vector<double> a(nheads), b(nheads), w(nheads);
    for (std::size_t h = 0; h < nheads; ++h) {
        const GpuHead& head = heads[h];
        const std::size_t patches = static_cast<std::size_t>(head.feature_h) * head.feature_w;
        a[h] = head.platt_a;
        b[h] = head.platt_b;
        w[h] = head.weight;
        const float* patch_map = head.d_output;
        if (head.kind == HeadKind::knn) {
            const std::size_t dim = head.index->dim();
            finite_per_image(head.d_output, images, patches * dim, flags + h * images, stream);
            // k = 1: the patch map is the nearest-neighbour distance, (images, h, w) in place.
            head.index->search(head.d_output, images * patches, 1, ws.distances.as<float>(),
                               ws.indices.as<std::int64_t>(), stream);
            head.index->score(head.d_output, images, patches, ws.distances.as<float>(),
                              ws.indices.as<std::int64_t>(), 1, scores + h * images, stream);
            patch_map = ws.distances.as<float>();
        } else {
            finite_per_image(head.d_output, images, patches, flags + h * images, stream);
            max_per_image(head.d_output, images, patches, scores + h * images, stream);
        }
        if (d_fused_map != nullptr && head.weight > 0.0) {
            anomaly_map(patch_map, static_cast<int>(images), head.feature_h, head.feature_w,
                        out_size, out_size, sigma, ws.full_map.as<float>(),
                        ws.scratch.as<float>(), stream);
            accumulate_platt_map(ws.full_map.as<float>(), images * plane, head.platt_a,
                                 head.platt_b, head.weight, d_fused_map, stream);
        }
    }
    platt_fuse(scores, nheads, images, a.data(), b.data(), w.data(),
               ws.probabilities.as<double>(), ws.fused.as<double>(), stream);
    result.scores.resize(nheads * images);
    result.probabilities.resize(nheads * images);
    result.fused.resize(images);
    std::vector<int> head_flags(nheads * images);
    check_cuda(cudaMemcpyAsync(result.scores.data(), scores, nheads * images * sizeof(double),
                               cudaMemcpyDeviceToHost, stream),
               "copy scores");
    check_cuda(cudaMemcpyAsync(result.probabilities.data(), ws.probabilities.data(),
                               nheads * images * sizeof(double), cudaMemcpyDeviceToHost, stream),
               "copy probabilities");
    check_cuda(cudaMemcpyAsync(result.fused.data(), ws.fused.data(), images * sizeof(double),
                               cudaMemcpyDeviceToHost, stream),
               "copy fused");
    check_cuda(cudaMemcpyAsync(head_flags.data(), flags, nheads * images * sizeof(int),
                               cudaMemcpyDeviceToHost, stream),
               "copy flags");
    check_cuda(cudaStreamSynchronize(stream), "gpu_score");
    result.finite.assign(images, 1);
    for (std::size_t h = 0; h < nheads; ++h)
        for (std::size_t i = 0; i < images; ++i)
            if (!head_flags[h * images + i]) result.finite[i] = 0;
    for (std::size_t h = 0; h < nheads; ++h)
        for (std::size_t i = 0; i < images; ++i)
            if (!result.finite[i]) {
                result.scores[h * images + i] = 0.0;
                result.probabilities[h * images + i] = 0.0;
                result.fused[i] = 0.0;
            }
    return result;
}

}  // namespace gpu
}  // namespace autoweld
