// The one file that knows pybind11. It checks arrays once, releases the GIL around the core
// call and maps caller mistakes (std::invalid_argument) to ValueError. No logic lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "anomaly_map.hpp"
#include "clahe.hpp"
#include "common.hpp"
#include "coreset.hpp"
#include "isa.hpp"
#include "knn.hpp"
#include "png_filter.hpp"
#include "preprocess.hpp"
#include "scoring.hpp"
#include "thread_pool.hpp"
#ifdef AUTOWELD_WITH_CUDA
#include "cuda/gpu.cuh"
#endif

namespace py = pybind11;

#ifndef AUTOWELD_VERSION
#define AUTOWELD_VERSION "dev"
#endif

// ---- image kernels: clahe, preprocess, anomaly map -------------------------------------
using U8Array = py::array_t<std::uint8_t, py::array::c_style>;
using F32Array = py::array_t<float, py::array::c_style>;

static void bind_image_kernels(py::module_& m) {
    m.def(
        "clahe",
        [](const U8Array& image, double clip_limit, int tiles_x, int tiles_y, int threads) {
            autoweld::require(image.ndim() == 2 || (image.ndim() == 3 && image.shape(2) == 3),
                              "image must be HxW or HxWx3");
            const int h = static_cast<int>(image.shape(0)), w = static_cast<int>(image.shape(1));
            std::vector<py::ssize_t> shape(image.shape(), image.shape() + image.ndim());
            U8Array out(shape);
            const std::uint8_t* src = image.data();
            std::uint8_t* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                if (image.ndim() == 2)
                    autoweld::clahe_gray(src, h, w, clip_limit, tiles_x, tiles_y, dst, threads);
                else
                    autoweld::clahe_bgr(src, h, w, clip_limit, tiles_x, tiles_y, dst, threads);
            }
            return out;
        },
        py::arg("image"), py::arg("clip_limit"), py::arg("tiles_x"), py::arg("tiles_y"),
        py::arg("threads"));
    m.def(
        "preprocess",
        [](const U8Array& image, int size, bool clahe, double clip_limit, int tiles_x,
           int tiles_y, double sigma, std::array<double, 3> mean, std::array<double, 3> std,
           int threads) {
            autoweld::require(image.ndim() == 2 || (image.ndim() == 3 && image.shape(2) == 3),
                              "image must be HxW or HxWx3");
            autoweld::require(size >= 1, "size must be >= 1");
            autoweld::PreprocessConfig config;
            config.size = size;
            config.clahe = clahe;
            config.clip_limit = clip_limit;
            config.tiles_x = tiles_x;
            config.tiles_y = tiles_y;
            config.sigma = sigma;
            config.mean = mean;
            config.std = std;
            config.threads = threads;
            F32Array out({py::ssize_t{3}, py::ssize_t{size}, py::ssize_t{size}});
            const int h = static_cast<int>(image.shape(0)), w = static_cast<int>(image.shape(1));
            const int channels = image.ndim() == 2 ? 1 : 3;
            const std::uint8_t* src = image.data();
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                autoweld::preprocess(src, h, w, channels, config, dst);
            }
            return out;
        },
        py::arg("image"), py::arg("size"), py::arg("clahe"), py::arg("clip_limit"),
        py::arg("tiles_x"), py::arg("tiles_y"), py::arg("sigma"), py::arg("mean"),
        py::arg("std"), py::arg("threads"));
    m.def(
        "anomaly_map",
        [](const F32Array& scores, int out_h, int out_w, double sigma, int threads) {
            autoweld::require(scores.ndim() == 3, "patch_scores must be (N, h, w)");
            const int n = static_cast<int>(scores.shape(0)), h = static_cast<int>(scores.shape(1)),
                      w = static_cast<int>(scores.shape(2));
            F32Array out({py::ssize_t{n}, py::ssize_t{out_h}, py::ssize_t{out_w}});
            const float* src = scores.data();
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                autoweld::anomaly_map(src, n, h, w, out_h, out_w, sigma, dst, threads);
            }
            return out;
        },
        py::arg("scores"), py::arg("out_h"), py::arg("out_w"), py::arg("sigma"),
        py::arg("threads"));
    m.def(
        "png_unfilter",
        [](const py::buffer& scanlines, int height, int width, int channels, bool swap_rgb) {
            const py::buffer_info info = scanlines.request();
            autoweld::require(info.ndim == 1 && info.itemsize == 1,
                              "scanlines must be a 1-D byte buffer");
            autoweld::require(height >= 1 && width >= 1, "height and width must be >= 1");
            autoweld::require(channels == 1 || channels == 3, "channels must be 1 or 3");
            std::vector<py::ssize_t> shape = {py::ssize_t{height}, py::ssize_t{width}};
            if (channels == 3) shape.push_back(3);
            U8Array out(shape);
            const auto* src = static_cast<const std::uint8_t*>(info.ptr);
            const auto size = static_cast<std::size_t>(info.size);
            std::uint8_t* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                autoweld::png_unfilter(src, size, height, width, channels, swap_rgb, dst);
            }
            return out;
        },
        py::arg("scanlines"), py::arg("height"), py::arg("width"), py::arg("channels"),
        py::arg("swap_rgb") = true);
}

// ---- numeric kernels: knn, coreset, scoring --------------------------------------------
// Arrays arrive C-contiguous with the exact dtype (the Python wrapper in autoweld.native checks
// dtype, shape and contiguity first and names the argument); nothing is converted silently.
using F32 = py::array_t<float, py::array::c_style>;
using I64 = py::array_t<std::int64_t, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;

static void require_2d(const py::array& a, const char* name) {
    autoweld::require(a.ndim() == 2, std::string(name) + " must be 2-D, got " +
                                         std::to_string(a.ndim()) + "-D");
}

// The index owns its copy of the bank; Python sees that copy through a read-only view.
struct PyKnnIndex {
    std::unique_ptr<autoweld::KnnIndex> index;
};

static py::tuple knn_result(std::size_t nq, std::size_t k,
                            const std::function<void(float*, std::int64_t*)>& run) {
    F32 distances({nq, k});
    I64 indices({nq, k});
    float* d = distances.mutable_data();
    std::int64_t* i = indices.mutable_data();
    {
        py::gil_scoped_release release;
        run(d, i);
    }
    return py::make_tuple(distances, indices);
}

// k is checked before the (Q, k) outputs are allocated, so an absurd k is the same ValueError
// as a slightly too large one, never a MemoryError.
static void require_k_within(std::int64_t k, std::size_t nb) {
    autoweld::require(k >= 1, "k must be at least 1");
    autoweld::check_k(static_cast<std::size_t>(k), nb);
}

// The (n,) output of a coreset selection from `rows` feature rows; n is checked before it is
// allocated, so a huge n is a ValueError, never an allocation first.
static I64 selection_output(std::int64_t n, std::size_t rows) {
    autoweld::require(static_cast<std::size_t>(n) <= rows,
                      "n must be <= the number of feature rows (" + std::to_string(rows) +
                          "), got " + std::to_string(n));
    return I64(static_cast<std::size_t>(n));
}

static void bind_numeric_kernels(py::module_& m) {
    m.def(
        "knn",
        [](const F32& queries, const F32& bank, std::int64_t k, int threads,
           const std::string& isa) {
            require_2d(queries, "queries");
            require_2d(bank, "bank");
            autoweld::require(queries.shape(1) == bank.shape(1),
                              "queries and bank must have the same feature dimension");
            const autoweld::KernelOptions options{threads, autoweld::parse_isa(isa)};
            const auto nq = static_cast<std::size_t>(queries.shape(0));
            const auto nb = static_cast<std::size_t>(bank.shape(0));
            const auto dim = static_cast<std::size_t>(bank.shape(1));
            require_k_within(k, nb);  // before the (Q, k) outputs are allocated
            const float* q = queries.data();
            const float* b = bank.data();
            return knn_result(nq, static_cast<std::size_t>(k), [&](float* d, std::int64_t* i) {
                autoweld::knn_search(q, nq, b, nb, dim, static_cast<std::size_t>(k), d, i, options);
            });
        },
        py::arg("queries"), py::arg("bank"), py::arg("k"), py::arg("threads") = 0,
        py::arg("isa") = "best");

    py::class_<PyKnnIndex>(m, "KnnIndex")
        .def(py::init([](const F32& bank, int threads) {
                 require_2d(bank, "bank");
                 auto self = std::make_unique<PyKnnIndex>();
                 const float* b = bank.data();
                 const auto nb = static_cast<std::size_t>(bank.shape(0));
                 const auto dim = static_cast<std::size_t>(bank.shape(1));
                 py::gil_scoped_release release;
                 self->index = std::make_unique<autoweld::KnnIndex>(b, nb, dim, threads);
                 return self;
             }),
             py::arg("bank"), py::arg("threads") = 0)
        .def(py::init([](const F32& bank, const F32& basis, int threads) {
                 require_2d(bank, "bank");
                 require_2d(basis, "basis");
                 const auto nb = static_cast<std::size_t>(bank.shape(0));
                 const auto dim = static_cast<std::size_t>(bank.shape(1));
                 autoweld::require(static_cast<std::size_t>(basis.shape(1)) == dim,
                                   "basis must have the bank's feature dimension as columns");
                 const auto prefix = static_cast<std::size_t>(basis.shape(0));
                 auto self = std::make_unique<PyKnnIndex>();
                 const float* b = bank.data();
                 const float* u = basis.data();
                 py::gil_scoped_release release;
                 self->index = std::make_unique<autoweld::KnnIndex>(b, nb, dim, u, prefix, threads);
                 return self;
             }),
             py::arg("bank"), py::arg("basis"), py::arg("threads") = 0)
        .def(
            "search",
            [](const PyKnnIndex& self, const F32& queries, std::int64_t k, int threads,
               const std::string& isa) {
                require_2d(queries, "queries");
                autoweld::require(static_cast<std::size_t>(queries.shape(1)) == self.index->dim(),
                                  "queries and bank must have the same feature dimension");
                const autoweld::KernelOptions options{threads, autoweld::parse_isa(isa)};
                const auto nq = static_cast<std::size_t>(queries.shape(0));
                require_k_within(k, self.index->size());  // before the outputs are allocated
                const float* q = queries.data();
                return knn_result(nq, static_cast<std::size_t>(k),
                                  [&](float* d, std::int64_t* i) {
                                      self.index->search(q, nq, static_cast<std::size_t>(k), d, i,
                                                         options);
                                  });
            },
            py::arg("queries"), py::arg("k"), py::arg("threads") = 0, py::arg("isa") = "best")
        .def_property_readonly("size", [](const PyKnnIndex& s) { return s.index->size(); })
        .def_property_readonly("dim", [](const PyKnnIndex& s) { return s.index->dim(); })
        .def_property_readonly("prefix", [](const PyKnnIndex& s) { return s.index->prefix(); })
        // A read-only view of the index's own copy (numpy refuses to make it writeable: its
        // base is the index, which keeps the memory alive and exports no buffer).
        .def_property_readonly("bank", [](py::object self) {
            const autoweld::KnnIndex& index = *self.cast<const PyKnnIndex&>().index;
            F32 view({index.size(), index.dim()}, index.bank(), self);
            py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            return view;
        });

    m.def(
        "bank_neighbours",
        [](const F32& bank, std::int64_t b, int threads) {
            require_2d(bank, "bank");
            autoweld::require(b >= 1, "b must be at least 1");
            const auto nb = static_cast<std::size_t>(bank.shape(0));
            const auto dim = static_cast<std::size_t>(bank.shape(1));
            I64 out({nb, static_cast<std::size_t>(b)});
            std::int64_t* o = out.mutable_data();
            const float* p = bank.data();
            py::gil_scoped_release release;
            autoweld::bank_neighbours(p, nb, dim, static_cast<std::size_t>(b), o, {threads});
            return out;
        },
        py::arg("bank"), py::arg("b"), py::arg("threads") = 0);

    m.def(
        "coreset",
        [](const F32& features, std::int64_t n, std::int64_t projection_dim, std::uint64_t seed,
           int threads) {
            require_2d(features, "features");
            autoweld::require(n >= 1, "n must be at least 1");
            autoweld::require(projection_dim >= 0, "projection_dim must be >= 0");
            const auto rows = static_cast<std::size_t>(features.shape(0));
            const auto dim = static_cast<std::size_t>(features.shape(1));
            I64 out = selection_output(n, rows);
            std::int64_t* o = out.mutable_data();
            const float* f = features.data();
            py::gil_scoped_release release;
            autoweld::coreset(f, rows, dim, static_cast<std::size_t>(n),
                              static_cast<std::size_t>(projection_dim), seed, o, threads);
            return out;
        },
        py::arg("features"), py::arg("n"), py::arg("projection_dim") = 128, py::arg("seed") = 0,
        py::arg("threads") = 0);

    m.def(
        "coreset_projection",
        [](std::int64_t dim, std::int64_t projection_dim, std::uint64_t seed) {
            autoweld::require(dim >= 1, "dim must be at least 1");
            autoweld::require(projection_dim >= 1, "projection_dim must be at least 1");
            F32 out({static_cast<std::size_t>(dim), static_cast<std::size_t>(projection_dim)});
            autoweld::coreset_projection(static_cast<std::size_t>(dim),
                                         static_cast<std::size_t>(projection_dim), seed,
                                         out.mutable_data());
            return out;
        },
        py::arg("dim"), py::arg("projection_dim"), py::arg("seed") = 0);

    m.def(
        "coreset_project",
        [](const F32& features, std::int64_t projection_dim, std::uint64_t seed, int threads) {
            require_2d(features, "features");
            autoweld::require(projection_dim >= 1, "projection_dim must be at least 1");
            const auto rows = static_cast<std::size_t>(features.shape(0));
            const auto dim = static_cast<std::size_t>(features.shape(1));
            F32 out({rows, static_cast<std::size_t>(projection_dim)});
            float* o = out.mutable_data();
            const float* f = features.data();
            py::gil_scoped_release release;
            autoweld::coreset_project(f, rows, dim, static_cast<std::size_t>(projection_dim),
                                      seed, o, threads);
            return out;
        },
        py::arg("features"), py::arg("projection_dim"), py::arg("seed") = 0,
        py::arg("threads") = 0);

    m.def(
        "coreset_select",
        [](const F32& x, std::int64_t n, std::int64_t start, int threads,
           const std::string& isa) {
            require_2d(x, "features");
            autoweld::require(n >= 1, "n must be at least 1");
            autoweld::require(start >= 0, "start must be >= 0");
            const autoweld::KernelOptions options{threads, autoweld::parse_isa(isa)};
            const auto rows = static_cast<std::size_t>(x.shape(0));
            const auto dim = static_cast<std::size_t>(x.shape(1));
            I64 out = selection_output(n, rows);
            std::int64_t* o = out.mutable_data();
            const float* p = x.data();
            py::gil_scoped_release release;
            autoweld::coreset_select(p, rows, dim, static_cast<std::size_t>(n),
                                     static_cast<std::size_t>(start), o, options);
            return out;
        },
        py::arg("features"), py::arg("n"), py::arg("start"), py::arg("threads") = 0,
        py::arg("isa") = "best");

    m.def(
        "patchcore_score",
        [](const F32& embeddings, const F32& distances, const I64& indices, const F32& bank,
           const I64& bank_neighbours) {
            require_2d(embeddings, "embeddings");
            require_2d(distances, "distances");
            require_2d(indices, "indices");
            require_2d(bank, "bank");
            require_2d(bank_neighbours, "bank_neighbours");
            autoweld::require(distances.shape(0) == embeddings.shape(0),
                              "distances must have one row per embedding");
            autoweld::require(indices.shape(0) == distances.shape(0) &&
                                  indices.shape(1) == distances.shape(1),
                              "indices must have the shape of distances");
            autoweld::require(bank.shape(1) == embeddings.shape(1),
                              "bank and embeddings must have the same feature dimension");
            autoweld::require(bank_neighbours.shape(0) == bank.shape(0),
                              "bank_neighbours must have one row per bank row");
            const float* e = embeddings.data();
            const float* d = distances.data();
            const std::int64_t* i = indices.data();
            const float* b = bank.data();
            const std::int64_t* nb = bank_neighbours.data();
            const auto patches = static_cast<std::size_t>(embeddings.shape(0));
            const auto dim = static_cast<std::size_t>(embeddings.shape(1));
            const auto k = static_cast<std::size_t>(distances.shape(1));
            const auto rows = static_cast<std::size_t>(bank.shape(0));
            const auto bcols = static_cast<std::size_t>(bank_neighbours.shape(1));
            py::gil_scoped_release release;
            return autoweld::patchcore_score(e, patches, dim, d, i, k, b, rows, nb, bcols);
        },
        py::arg("embeddings"), py::arg("distances"), py::arg("indices"), py::arg("bank"),
        py::arg("bank_neighbours"));

    m.def(
        "platt",
        [](const F64& scores, double a, double b) {
            F64 out(scores.size());
            const double* s = scores.data();
            double* o = out.mutable_data();
            const auto n = static_cast<std::size_t>(scores.size());
            py::gil_scoped_release release;
            autoweld::platt(s, n, a, b, o);
            return out;
        },
        py::arg("scores"), py::arg("a"), py::arg("b"));

    m.def(
        "fuse",
        [](const F64& probabilities, const F64& weights) {
            require_2d(probabilities, "probabilities");
            autoweld::require(weights.ndim() == 1, "weights must be 1-D");
            autoweld::require(probabilities.shape(1) == weights.shape(0),
                              "probabilities must have one column per weight");
            const auto rows = static_cast<std::size_t>(probabilities.shape(0));
            const auto m = static_cast<std::size_t>(weights.shape(0));
            F64 out(rows);
            const double* p = probabilities.data();
            const double* w = weights.data();
            double* o = out.mutable_data();
            py::gil_scoped_release release;
            autoweld::fuse(p, rows, m, w, o);
            return out;
        },
        py::arg("probabilities"), py::arg("weights"));
}


// ---- GPU section (owned by the GPU path; docs/gpu.md) --------------------------------------
// Device pointers cross this boundary as Python ints (from __cuda_array_interface__, CuPy,
// torch, or ORT's OrtValue.data_ptr()); streams likewise (0: the legacy default stream).
#ifdef AUTOWELD_WITH_CUDA
namespace {

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

template <class T>
T* as_device(std::uintptr_t ptr, const char* name) {
    autoweld::require(ptr != 0, std::string(name) + ": device pointer is null");
    return reinterpret_cast<T*>(ptr);
}

struct PyGpuIndex {
    F32 bank;  // host copy kept for properties only; the index holds its own device copy
    std::unique_ptr<autoweld::gpu::GpuKnnIndex> index;
};

}  // namespace

static void bind_gpu(py::module_& m) {
    m.def("cuda_available", &autoweld::gpu::cuda_available);
    m.def("cuda_device_count", &autoweld::gpu::device_count);
    m.def("cuda_device_name", &autoweld::gpu::device_name, py::arg("device"));

    py::class_<PyGpuIndex>(m, "GpuKnnIndex")
        .def(py::init([](const F32& bank, std::optional<I64> neighbours, int device) {
                 require_2d(bank, "bank");
                 auto self = std::make_unique<PyGpuIndex>();
                 self->bank = bank;
                 const auto nb = static_cast<std::size_t>(bank.shape(0));
                 const auto dim = static_cast<std::size_t>(bank.shape(1));
                 const std::int64_t* nbr = nullptr;
                 std::size_t b = 0;
                 if (neighbours) {
                     require_2d(*neighbours, "bank_neighbours");
                     autoweld::require(static_cast<std::size_t>(neighbours->shape(0)) == nb,
                                       "bank_neighbours must have one row per bank row");
                     nbr = neighbours->data();
                     b = static_cast<std::size_t>(neighbours->shape(1));
                 }
                 const float* host = bank.data();
                 py::gil_scoped_release release;
                 self->index =
                     std::make_unique<autoweld::gpu::GpuKnnIndex>(host, nb, dim, nbr, b, device);
                 return self;
             }),
             py::arg("bank"), py::arg("bank_neighbours") = py::none(), py::arg("device") = 0)
        .def(
            "search_device",
            [](const PyGpuIndex& self, std::uintptr_t queries, std::size_t nq, std::size_t k,
               std::uintptr_t distances, std::uintptr_t indices, std::uintptr_t stream) {
                const float* q = as_device<const float>(queries, "queries");
                float* d = as_device<float>(distances, "distances");
                std::int64_t* i = as_device<std::int64_t>(indices, "indices");
                py::gil_scoped_release release;
                self.index->search(q, nq, k, d, i, as_stream(stream));
            },
            py::arg("queries"), py::arg("nq"), py::arg("k"), py::arg("distances"),
            py::arg("indices"), py::arg("stream") = 0)
        .def(
            "search",
            [](const PyGpuIndex& self, const F32& queries, std::size_t k) {
                require_2d(queries, "queries");
                autoweld::require(static_cast<std::size_t>(queries.shape(1)) == self.index->dim(),
                                  "queries and bank must have the same feature dimension");
                const auto nq = static_cast<std::size_t>(queries.shape(0));
                const auto dim = self.index->dim();
                const float* q = queries.data();
                return knn_result(nq, k, [&](float* d, std::int64_t* i) {
                    using autoweld::gpu::check_cuda;
                    autoweld::gpu::DeviceBuffer dq(std::max<std::size_t>(1, nq * dim) * 4),
                        dd(std::max<std::size_t>(1, nq * k) * 4),
                        di(std::max<std::size_t>(1, nq * k) * 8);
                    check_cuda(cudaMemcpy(dq.data(), q, nq * dim * 4, cudaMemcpyHostToDevice),
                               "copy queries");
                    self.index->search(dq.as<float>(), nq, k, dd.as<float>(),
                                       di.as<std::int64_t>(), nullptr);
                    check_cuda(cudaMemcpy(d, dd.data(), nq * k * 4, cudaMemcpyDeviceToHost),
                               "copy distances");
                    check_cuda(cudaMemcpy(i, di.data(), nq * k * 8, cudaMemcpyDeviceToHost),
                               "copy indices");
                });
            },
            py::arg("queries"), py::arg("k"))
        .def_property_readonly("size", [](const PyGpuIndex& s) { return s.index->size(); })
        .def_property_readonly("dim", [](const PyGpuIndex& s) { return s.index->dim(); })
        .def_property_readonly("device", [](const PyGpuIndex& s) { return s.index->device(); });

    py::class_<autoweld::gpu::GpuScoreWorkspace>(m, "GpuScoreWorkspace").def(py::init<>());

    // heads: list of (kind "knn"/"map", output pointer, GpuKnnIndex or None, feature_h,
    // feature_w, platt_a, platt_b, weight). Returns (scores (H, n), probabilities (H, n),
    // fused (n,), finite (n,)) as numpy arrays.
    m.def(
        "gpu_score",
        [](const py::list& heads, std::size_t images, int out_size, double sigma,
           std::uintptr_t fused_map, autoweld::gpu::GpuScoreWorkspace& workspace,
           std::uintptr_t stream) {
            std::vector<autoweld::gpu::GpuHead> specs;
            for (const auto& item : heads) {
                auto t = item.cast<py::tuple>();
                autoweld::require(t.size() == 8, "each head is an 8-tuple");
                autoweld::gpu::GpuHead h;
                const auto kind = t[0].cast<std::string>();
                autoweld::require(kind == "knn" || kind == "map",
                                  "head kind must be 'knn' or 'map', got '" + kind + "'");
                h.kind = kind == "knn" ? autoweld::gpu::HeadKind::knn
                                       : autoweld::gpu::HeadKind::map;
                h.d_output = as_device<const float>(t[1].cast<std::uintptr_t>(), "head output");
                if (!t[2].is_none()) h.index = t[2].cast<const PyGpuIndex&>().index.get();
                h.feature_h = t[3].cast<int>();
                h.feature_w = t[4].cast<int>();
                h.platt_a = t[5].cast<double>();
                h.platt_b = t[6].cast<double>();
                h.weight = t[7].cast<double>();
                specs.push_back(h);
            }
            autoweld::gpu::GpuScoreResult r;
            {
                py::gil_scoped_release release;
                r = autoweld::gpu::gpu_score(specs.data(), specs.size(), images, out_size, sigma,
                                             reinterpret_cast<float*>(fused_map), workspace,
                                             as_stream(stream));
            }
            const std::size_t nh = specs.size();
            F64 scores({nh, images}), probabilities({nh, images}), fused(images);
            py::array_t<bool> finite(images);
            std::copy(r.scores.begin(), r.scores.end(), scores.mutable_data());
            std::copy(r.probabilities.begin(), r.probabilities.end(),
                      probabilities.mutable_data());
            std::copy(r.fused.begin(), r.fused.end(), fused.mutable_data());
            for (std::size_t i = 0; i < images; ++i) finite.mutable_data()[i] = r.finite[i] != 0;
            return py::make_tuple(scores, probabilities, fused, finite);
        },
        py::arg("heads"), py::arg("images"), py::arg("out_size"), py::arg("sigma"),
        py::arg("fused_map"), py::arg("workspace"), py::arg("stream") = 0);
}
#endif  // AUTOWELD_WITH_CUDA

PYBIND11_MODULE(_native, m) {
    m.doc() = "AutoWeld C++ core (private; use autoweld.native)";
    m.attr("__version__") = AUTOWELD_VERSION;
    m.def("has_avx2_fma", [] { return autoweld::isa_available(autoweld::Isa::avx2); },
          "True when the kernels run their AVX2+FMA paths on this CPU.");
    m.def("has_avx512", [] { return autoweld::isa_available(autoweld::Isa::avx512); },
          "True when the kNN kernels run their AVX-512 path on this CPU.");
    m.def("hardware_threads", [] { return autoweld::resolve_threads(0); });
    bind_image_kernels(m);
    bind_numeric_kernels(m);
#ifdef AUTOWELD_WITH_CUDA
    m.attr("WITH_CUDA") = true;
    bind_gpu(m);
#else
    m.attr("WITH_CUDA") = false;
#endif
}
