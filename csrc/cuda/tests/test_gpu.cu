// GPU kernels against the CPU core on the same inputs. Needs a CUDA device: exits 77 (ctest's
// "skipped") when there is none, so it can be built everywhere nvcc is.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "../../anomaly_map.hpp"
#include "../../knn.hpp"
#include "../../scoring.hpp"
#include "../../tests/check.hpp"
#include "../gpu.cuh"

namespace gpu = autoweld::gpu;

namespace {

template <class T>
gpu::DeviceBuffer upload(const std::vector<T>& host) {
    gpu::DeviceBuffer buffer(std::max<std::size_t>(1, host.size()) * sizeof(T));
    gpu::check_cuda(cudaMemcpy(buffer.data(), host.data(), host.size() * sizeof(T),
                               cudaMemcpyHostToDevice),
                    "upload");
    return buffer;
}

template <class T>
std::vector<T> download(const gpu::DeviceBuffer& buffer, std::size_t n) {
    std::vector<T> host(n);
    gpu::check_cuda(cudaDeviceSynchronize(), "sync");
    gpu::check_cuda(cudaMemcpy(host.data(), buffer.data(), n * sizeof(T), cudaMemcpyDeviceToHost),
                    "download");
    return host;
}

std::vector<float> random_matrix(std::size_t rows, std::size_t cols, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> m(rows * cols);
    for (float& v : m) v = normal(rng);
    return m;
}

// GPU knn vs CPU knn: distances within tolerance; indices equal wherever the CPU's k-th and
// (k+1)-th distances are not a near tie (both use float arithmetic, in different orders).
void check_knn(std::size_t nq, std::size_t nb, std::size_t dim, std::size_t k, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<float> q = random_matrix(nq, dim, rng), bank = random_matrix(nb, dim, rng);
    std::vector<float> cpu_d(nq * k);
    std::vector<std::int64_t> cpu_i(nq * k);
    autoweld::knn_search(q.data(), nq, bank.data(), nb, dim, k, cpu_d.data(), cpu_i.data(), {1});
    gpu::GpuKnnIndex index(bank.data(), nb, dim, nullptr, 0, 0);
    auto dq = upload(q);
    gpu::DeviceBuffer dd(nq * k * sizeof(float)), di(nq * k * sizeof(std::int64_t));
    index.search(dq.as<float>(), nq, k, dd.as<float>(), di.as<std::int64_t>(), nullptr);
    auto gpu_d = download<float>(dd, nq * k);
    auto gpu_i = download<std::int64_t>(di, nq * k);
    int mismatched = 0;
    for (std::size_t r = 0; r < nq; ++r) {
        for (std::size_t j = 0; j < k; ++j) {
            const float c = cpu_d[r * k + j], g = gpu_d[r * k + j];
            if (!(std::fabs(c - g) <= 1e-4f * std::max(1.f, c))) ++mismatched;
            if (j > 0 && gpu_d[r * k + j] < gpu_d[r * k + j - 1]) ++mismatched;
            const bool clear = (j + 1 == k || cpu_d[r * k + j + 1] - c > 1e-3f) &&
                               (j == 0 || c - cpu_d[r * k + j - 1] > 1e-3f);
            if (clear && cpu_i[r * k + j] != gpu_i[r * k + j]) ++mismatched;
        }
    }
    if (mismatched) std::fprintf(stderr, "knn %zux%zux%zu k=%zu\n", nq, nb, dim, k);
    CHECK(mismatched == 0);
}

void check_ties() {
    // Bank rows 0..5 where rows 1, 3 and 4 are identical: a query equal to them must list
    // 1, 3, 4 in that order at distance 0.
    const std::size_t dim = 5;
    std::vector<float> bank(6 * dim);
    for (std::size_t r = 0; r < 6; ++r)
        for (std::size_t t = 0; t < dim; ++t) bank[r * dim + t] = static_cast<float>(r * 10 + t);
    for (std::size_t t = 0; t < dim; ++t) bank[3 * dim + t] = bank[4 * dim + t] = bank[dim + t];
    std::vector<float> q(bank.begin() + dim, bank.begin() + 2 * dim);
    gpu::GpuKnnIndex index(bank.data(), 6, dim, nullptr, 0, 0);
    auto dq = upload(q);
    gpu::DeviceBuffer dd(3 * sizeof(float)), di(3 * sizeof(std::int64_t));
    index.search(dq.as<float>(), 1, 3, dd.as<float>(), di.as<std::int64_t>(), nullptr);
    auto d = download<float>(dd, 3);
    auto i = download<std::int64_t>(di, 3);
    CHECK(i[0] == 1 && i[1] == 3 && i[2] == 4);
    CHECK(d[0] == 0.f && d[1] == 0.f && d[2] == 0.f);
    CHECK_THROWS(index.search(dq.as<float>(), 1, 17, dd.as<float>(), di.as<std::int64_t>(),
                              nullptr),
                 std::invalid_argument);
    CHECK_THROWS(index.search(dq.as<float>(), 1, 7, dd.as<float>(), di.as<std::int64_t>(),
                              nullptr),
                 std::invalid_argument);
}

void check_scoring_and_maps() {
    std::mt19937 rng(7);
    const std::size_t images = 3, fh = 7, fw = 9, patches = fh * fw, dim = 37, nb = 300, b = 5;
    std::vector<float> bank = random_matrix(nb, dim, rng);
    std::vector<float> emb = random_matrix(images * patches, dim, rng);
    std::vector<std::int64_t> neighbours(nb * b);
    autoweld::bank_neighbours(bank.data(), nb, dim, b, neighbours.data(), {1});
    std::vector<float> map_head = random_matrix(images * patches, 1, rng);

    // CPU reference, composed as the Inspector does.
    std::vector<float> cd(images * patches);
    std::vector<std::int64_t> ci(images * patches);
    autoweld::knn_search(emb.data(), images * patches, bank.data(), nb, dim, 1, cd.data(),
                         ci.data(), {1});
    std::vector<double> cpu_scores(2 * images);
    for (std::size_t i = 0; i < images; ++i) {
        cpu_scores[i] = autoweld::patchcore_score(emb.data() + i * patches * dim, patches, dim,
                                                  cd.data() + i * patches, ci.data() + i * patches,
                                                  1, bank.data(), nb, neighbours.data(), b);
        cpu_scores[images + i] =
            *std::max_element(map_head.begin() + i * patches, map_head.begin() + (i + 1) * patches);
    }
    const double a[2] = {-1.3, -0.7}, bb[2] = {2.0, 1.1}, w[2] = {0.75, 0.25};
    std::vector<double> cpu_p(2 * images), cpu_f(images), stacked(images * 2);
    autoweld::platt(cpu_scores.data(), images, a[0], bb[0], cpu_p.data());
    autoweld::platt(cpu_scores.data() + images, images, a[1], bb[1], cpu_p.data() + images);
    for (std::size_t i = 0; i < images; ++i) {
        stacked[i * 2] = cpu_p[i];
        stacked[i * 2 + 1] = cpu_p[images + i];
    }
    autoweld::fuse(stacked.data(), images, 2, w, cpu_f.data());
    const int size = 64;
    const double sigma = 4.0;
    std::vector<float> full0(images * size * size), full1(images * size * size);
    autoweld::anomaly_map(cd.data(), images, fh, fw, size, size, sigma, full0.data(), 1);
    autoweld::anomaly_map(map_head.data(), images, fh, fw, size, size, sigma, full1.data(), 1);

    // GPU: raw anomaly_map first.
    auto d_map = upload(map_head);
    gpu::DeviceBuffer d_out(full1.size() * sizeof(float)), d_scratch(full1.size() * sizeof(float));
    gpu::anomaly_map(d_map.as<float>(), images, fh, fw, size, size, sigma, d_out.as<float>(),
                     d_scratch.as<float>(), nullptr);
    auto g_full1 = download<float>(d_out, full1.size());
    float worst = 0.f;
    for (std::size_t i = 0; i < full1.size(); ++i)
        worst = std::max(worst, std::fabs(g_full1[i] - full1[i]));
    CHECK(worst < 1e-5f);
    gpu::anomaly_map(d_map.as<float>(), images, fh, fw, size, size, 0.0, d_out.as<float>(),
                     nullptr, nullptr);
    std::vector<float> plain(full1.size());
    autoweld::anomaly_map(map_head.data(), images, fh, fw, size, size, 0.0, plain.data(), 1);
    auto g_plain = download<float>(d_out, plain.size());
    worst = 0.f;
    for (std::size_t i = 0; i < plain.size(); ++i)
        worst = std::max(worst, std::fabs(g_plain[i] - plain[i]));
    CHECK(worst < 1e-6f);

    // GPU: the whole head -> fused result path.
    gpu::GpuKnnIndex index(bank.data(), nb, dim, neighbours.data(), b, 0);
    auto d_emb = upload(emb);
    gpu::GpuHead heads[2];
    heads[0].kind = gpu::HeadKind::knn;
    heads[0].d_output = d_emb.as<float>();
    heads[0].index = &index;
    heads[1].kind = gpu::HeadKind::map;
    heads[1].d_output = d_map.as<float>();
    for (int h = 0; h < 2; ++h) {
        heads[h].feature_h = fh;
        heads[h].feature_w = fw;
        heads[h].platt_a = a[h];
        heads[h].platt_b = bb[h];
        heads[h].weight = w[h];
    }
    gpu::GpuScoreWorkspace ws;
    gpu::DeviceBuffer d_fused_map(images * size * size * sizeof(float));
    gpu::GpuScoreResult r =
        gpu::gpu_score(heads, 2, images, size, sigma, d_fused_map.as<float>(), ws, nullptr);
    for (std::size_t i = 0; i < 2 * images; ++i) {
        CHECK_NEAR(r.scores[i], cpu_scores[i], 1e-4 * std::max(1.0, std::fabs(cpu_scores[i])));
        CHECK_NEAR(r.probabilities[i], cpu_p[i], 1e-5);
    }
    for (std::size_t i = 0; i < images; ++i) {
        CHECK_NEAR(r.fused[i], cpu_f[i], 1e-5);
        CHECK(r.finite[i] == 1);
    }
    auto g_fused = download<float>(d_fused_map, images * size * size);
    worst = 0.f;
    for (std::size_t i = 0; i < g_fused.size(); ++i) {
        auto platt = [](float v, double pa, double pb) {
            const float z = std::min(88.f, std::max(-88.f, float(pa) * v + float(pb)));
            return 1.f / (1.f + std::exp(z));
        };
        const float want = float(w[0]) * platt(full0[i], a[0], bb[0]) +
                           float(w[1]) * platt(full1[i], a[1], bb[1]);
        worst = std::max(worst, std::fabs(g_fused[i] - want));
    }
    CHECK(worst < 1e-4f);

    // A NaN in image 1's embeddings fails that image only.
    emb[patches * dim + 3] = std::nanf("");
    auto d_bad = upload(emb);
    heads[0].d_output = d_bad.as<float>();
    r = gpu::gpu_score(heads, 2, images, size, sigma, nullptr, ws, nullptr);
    CHECK(r.finite[0] == 1 && r.finite[1] == 0 && r.finite[2] == 1);
    CHECK_NEAR(r.fused[0], cpu_f[0], 1e-5);
}

}  // namespace

int main() {
    if (!gpu::cuda_available()) {
        std::printf("test_gpu: no CUDA device, skipped\n");
        return 77;
    }
    std::printf("test_gpu on %s\n", gpu::device_name(0).c_str());
    check_knn(1, 1, 1, 1, 1);
    check_knn(70, 5, 3, 5, 2);          // bank smaller than kMaxK
    check_knn(130, 1000, 17, 1, 3);     // ragged tiles, dim not a multiple of 16
    check_knn(257, 4099, 64, 16, 4);    // k = kMaxK
    check_knn(1024, 16384, 128, 1, 5);  // bench-like, several bank slices
    check_knn(64, 3000, 1536, 3, 6);    // WideResNet feature width
    check_ties();
    check_scoring_and_maps();
    return autoweld_test::finish("test_gpu");
}
