// Exact kNN on the device: a tiled shared-memory kernel computes blocks of squared distances
// ||q||^2 + ||b||^2 - 2 q.b (clamped at 0) and keeps, per query and per slice of the bank, the
// kMaxK best candidates in registers (the top-k selection is fused: the distance matrix is never
// written to memory). A second kernel merges the slices' candidates per query (one warp per
// query), re-ranks the best few by exact distances computed from the differences, and writes
// sqrt distances ascending with ties broken by the lower bank index - the CPU knn_search's
// contract. No cuBLAS: the toolkit we build against may not ship it, and the fused selection
// saves writing and re-reading the Q x B matrix.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <string>

#include "../common.hpp"
#include "gpu.cuh"

namespace autoweld {
namespace gpu {
namespace {

constexpr int kTileQ = 64;     // queries per block
constexpr int kTileB = 64;     // bank rows per tile
constexpr int kTileD = 16;     // feature slice per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads, each 4 x 4 outputs
constexpr int kParts = 4;      // selector threads per query row (each scans 16 columns)
constexpr int kK = static_cast<int>(kMaxK);

// (d, i) before (e, j): smaller distance, then lower index; index -1 marks an empty slot.
__device__ __forceinline__ bool before(float d, int i, float e, int j) {
    return d < e || (d == e && static_cast<unsigned>(i) < static_cast<unsigned>(j));
}

// Inserts (v, i) into the ascending list (d, id) of kK entries when it belongs there.
// Fully unrolled with constant indices so the lists stay in registers.
__device__ __forceinline__ void insert_sorted(float (&d)[kK], int (&id)[kK], float v, int i) {
    if (!before(v, i, d[kK - 1], id[kK - 1])) return;
    bool placed = false;
#pragma unroll
    for (int j = kK - 1; j > 0; --j) {
        if (!placed) {
            if (before(v, i, d[j - 1], id[j - 1])) {
                d[j] = d[j - 1];
                id[j] = id[j - 1];
            } else {
                d[j] = v;
                id[j] = i;
                placed = true;
            }
        }
    }
    if (!placed) {
        d[0] = v;
        id[0] = i;
    }
}

__global__ void squared_norms_kernel(const float* __restrict__ x, std::size_t n,
                                     std::size_t dim, float* __restrict__ out) {
    const std::size_t warp = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= n) return;
    const float* row = x + warp * dim;
    float s = 0.f;
    for (std::size_t t = lane; t < dim; t += 32) s = fmaf(row[t], row[t], s);
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) out[warp] = s;
}

// grid (query tiles, bank slices). Writes per query kParts * kK candidates per slice:
// cand_d/cand_i[(q * slots + slice * kParts + part) * kK + j], slots = slices * kParts.
__global__ void __launch_bounds__(kThreads)
    tile_topk_kernel(const float* __restrict__ q, const float* __restrict__ qnorm, int nq,
                     const float* __restrict__ bank, const float* __restrict__ bnorm, int nb,
                     int dim, int tiles_per_slice, float* __restrict__ cand_d,
                     int* __restrict__ cand_i) {
    __shared__ float qs[kTileD][kTileQ + 4];
    __shared__ float bs[kTileD][kTileB + 4];
    __shared__ float ds[kTileQ][kTileB + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int q0 = blockIdx.x * kTileQ;
    const int slice = blockIdx.y, slots = gridDim.y * kParts;
    const int bank_tiles = (nb + kTileB - 1) / kTileB;
    const int tile_begin = slice * tiles_per_slice;
    const int tile_end = min(tile_begin + tiles_per_slice, bank_tiles);
    const int sel_row = tid / kParts, sel_part = tid % kParts;

    float best_d[kK];
    int best_i[kK];
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        best_d[j] = FLT_MAX;
        best_i[j] = -1;
    }

    for (int tile = tile_begin; tile < tile_end; ++tile) {
        const int b0 = tile * kTileB;
        float acc[4][4] = {};
        for (int d0 = 0; d0 < dim; d0 += kTileD) {
#pragma unroll
            for (int l = 0; l < (kTileQ * kTileD) / kThreads; ++l) {
                const int e = tid + l * kThreads, r = e / kTileD, c = e % kTileD;
                const int gd = d0 + c;
                const int gq = q0 + r, gb = b0 + r;
                qs[c][r] = (gq < nq && gd < dim) ? q[static_cast<std::size_t>(gq) * dim + gd] : 0.f;
                bs[c][r] =
                    (gb < nb && gd < dim) ? bank[static_cast<std::size_t>(gb) * dim + gd] : 0.f;
            }
            __syncthreads();
#pragma unroll
            for (int c = 0; c < kTileD; ++c) {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    a[i] = qs[c][ty * 4 + i];
                    b[i] = bs[c][tx * 4 + i];
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int qi = ty * 4 + i, bj = tx * 4 + j;
                const int gq = q0 + qi, gb = b0 + bj;
                float v = FLT_MAX;
                if (gq < nq && gb < nb) v = fmaxf(qnorm[gq] + bnorm[gb] - 2.f * acc[i][j], 0.f);
                ds[qi][bj] = v;
            }
        }
        __syncthreads();
        // Each thread scans its 16 columns of one row in increasing bank index.
#pragma unroll 4
        for (int c = 0; c < kTileB / kParts; ++c) {
            const int col = sel_part * (kTileB / kParts) + c;
            const float v = ds[sel_row][col];
            if (v < FLT_MAX) insert_sorted(best_d, best_i, v, b0 + col);
        }
        __syncthreads();
    }
    const int gq = q0 + sel_row;
    if (gq < nq) {
        const std::size_t base =
            (static_cast<std::size_t>(gq) * slots + slice * kParts + sel_part) * kK;
#pragma unroll
        for (int j = 0; j < kK; ++j) {
            cand_d[base + j] = best_d[j];
            cand_i[base + j] = best_i[j];
        }
    }
}

// One warp per query: merge `slots * kK` candidates, keep the best `rerank`, recompute their
// distances exactly as sum((q - b)^2), order them and write the first k as sqrt distances.
__global__ void merge_rerank_kernel(const float* __restrict__ q, int nq,
                                    const float* __restrict__ bank, int dim, int slots,
                                    const float* __restrict__ cand_d,
                                    const int* __restrict__ cand_i, int rerank, int k,
                                    float* __restrict__ out_d, std::int64_t* __restrict__ out_i) {
    const int warps_per_block = blockDim.x / 32;
    const int query = blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (query >= nq) return;  // uniform per warp
    float d[kK];
    int id[kK];
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        d[j] = FLT_MAX;
        id[j] = -1;
    }
    const std::size_t count = static_cast<std::size_t>(slots) * kK;
    const float* cd = cand_d + static_cast<std::size_t>(query) * count;
    const int* ci = cand_i + static_cast<std::size_t>(query) * count;
    for (std::size_t c = lane; c < count; c += 32) {
        const int i = ci[c];
        if (i >= 0) insert_sorted(d, id, cd[c], i);
    }
    // Warp merge: `rerank` rounds of "pop the smallest head"; lane r keeps the r-th winner.
    int mine = -1;
    for (int r = 0; r < rerank; ++r) {
        float hv = d[0];
        int hi = id[0];
        for (int off = 16; off > 0; off /= 2) {
            const float ov = __shfl_xor_sync(0xffffffffu, hv, off);
            const int oi = __shfl_xor_sync(0xffffffffu, hi, off);
            if (before(ov, oi, hv, hi)) {
                hv = ov;
                hi = oi;
            }
        }
        if (hi >= 0 && id[0] == hi) {
#pragma unroll
            for (int j = 0; j < kK - 1; ++j) {
                d[j] = d[j + 1];
                id[j] = id[j + 1];
            }
            d[kK - 1] = FLT_MAX;
            id[kK - 1] = -1;
        }
        if (lane == r) mine = hi;
    }
    // Exact distances of the winners.
    const float* qrow = q + static_cast<std::size_t>(query) * dim;
    float exact = FLT_MAX;
    for (int r = 0; r < rerank; ++r) {
        const int cand = __shfl_sync(0xffffffffu, mine, r);
        if (cand < 0) continue;  // uniform: every lane sees the same cand
        const float* brow = bank + static_cast<std::size_t>(cand) * dim;
        float s = 0.f;
        for (int t = lane; t < dim; t += 32) {
            const float diff = qrow[t] - brow[t];
            s = fmaf(diff, diff, s);
        }
        for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == r) exact = s;
    }
    // Rank by (exact, index) across the first `rerank` lanes and write the first k. Slots no
    // candidate fills (only possible for NaN queries) read NaN / -1.
    if (lane < k) {
        out_d[static_cast<std::size_t>(query) * k + lane] = __int_as_float(0x7fffffff);
        out_i[static_cast<std::size_t>(query) * k + lane] = -1;
    }
    __syncwarp();
    int rank = 0;
    for (int j = 0; j < rerank; ++j) {
        const float ej = __shfl_sync(0xffffffffu, exact, j);
        const int cj = __shfl_sync(0xffffffffu, mine, j);
        if (j != lane && before(ej, cj, exact, mine)) ++rank;
    }
    if (lane < rerank && mine >= 0 && rank < k) {
        out_d[static_cast<std::size_t>(query) * k + rank] = sqrtf(exact);
        out_i[static_cast<std::size_t>(query) * k + rank] = mine;
    }
}

struct KnnPlan {
    int query_tiles, bank_tiles, slices, tiles_per_slice, slots;
};

KnnPlan plan(std::size_t nq, std::size_t nb, int device) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        sms <= 0)
        sms = 1;
    KnnPlan p{};
    p.query_tiles = static_cast<int>((nq + kTileQ - 1) / kTileQ);
    p.bank_tiles = static_cast<int>((nb + kTileB - 1) / kTileB);
    // Enough blocks for two per SM, at most 64 slices (the merge reads 64*4*16 candidates).
    int slices = (2 * sms + p.query_tiles - 1) / std::max(1, p.query_tiles);
    slices = std::max(1, std::min({slices, p.bank_tiles, 64}));
    p.tiles_per_slice = (p.bank_tiles + slices - 1) / slices;
    p.slices = (p.bank_tiles + p.tiles_per_slice - 1) / p.tiles_per_slice;
    p.slots = p.slices * kParts;
    return p;
}

std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

void squared_norms(const float* d_x, std::size_t n, std::size_t dim, float* d_out,
                   cudaStream_t stream) {
    if (n == 0) return;
    require(dim >= 1, "dim must be at least 1");
    const int threads = 256;
    const std::size_t blocks = (n * 32 + threads - 1) / threads;
    squared_norms_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(d_x, n, dim,
                                                                                d_out);
    check_cuda(cudaGetLastError(), "squared_norms kernel launch");
}

std::size_t knn_workspace_bytes(std::size_t nq, std::size_t nb, int device) {
    const KnnPlan p = plan(nq, nb, device);
    const std::size_t cands = nq * static_cast<std::size_t>(p.slots) * kMaxK;
    return align256(nq * sizeof(float)) + align256(cands * sizeof(float)) +
           align256(cands * sizeof(int));
}

void knn_search(const float* d_queries, std::size_t nq, const float* d_bank,
                const float* d_bank_norms, std::size_t nb, std::size_t dim, std::size_t k,
                float* d_distances, std::int64_t* d_indices, void* d_workspace,
                std::size_t workspace_bytes, int device, cudaStream_t stream) {
    require(nb >= 1, "bank: memory bank is empty");
    require(dim >= 1, "bank: feature dimension must be at least 1");
    require(k >= 1 && k <= nb, "k must be in [1, bank rows]");
    require(k <= kMaxK, "k must be at most " + std::to_string(kMaxK) + " on the GPU");
    require(nq <= 0x7fffffffu && nb <= 0x7fffffffu && dim <= 0x7fffffffu,
            "queries/bank too large for the GPU kernels (2^31 rows or features)");
    if (nq == 0) return;
    require(workspace_bytes >= knn_workspace_bytes(nq, nb, device),
            "workspace is smaller than knn_workspace_bytes()");
    const KnnPlan p = plan(nq, nb, device);
    const std::size_t cands = nq * static_cast<std::size_t>(p.slots) * kMaxK;
    char* ws = static_cast<char*>(d_workspace);
    float* qnorm = reinterpret_cast<float*>(ws);
    float* cand_d = reinterpret_cast<float*>(ws + align256(nq * sizeof(float)));
    int* cand_i = reinterpret_cast<int*>(ws + align256(nq * sizeof(float)) +
                                         align256(cands * sizeof(float)));
    squared_norms(d_queries, nq, dim, qnorm, stream);
    const dim3 grid(static_cast<unsigned>(p.query_tiles), static_cast<unsigned>(p.slices));
    tile_topk_kernel<<<grid, kThreads, 0, stream>>>(
        d_queries, qnorm, static_cast<int>(nq), d_bank, d_bank_norms, static_cast<int>(nb),
        static_cast<int>(dim), p.tiles_per_slice, cand_d, cand_i);
    check_cuda(cudaGetLastError(), "knn tile kernel launch");
    // Over-fetch for the exact re-rank: the float expansion can swap near-equal neighbours.
    const int rerank = static_cast<int>(std::min<std::size_t>(
        {kMaxK, std::max<std::size_t>(4, 2 * k), nb}));
    const int warps = 4;
    const unsigned blocks = static_cast<unsigned>((nq + warps - 1) / warps);
    merge_rerank_kernel<<<blocks, warps * 32, 0, stream>>>(
        d_queries, static_cast<int>(nq), d_bank, static_cast<int>(dim), p.slots, cand_d, cand_i,
        rerank, static_cast<int>(k), d_distances, d_indices);
    check_cuda(cudaGetLastError(), "knn merge kernel launch");
}

}  // namespace gpu
}  // namespace autoweld
