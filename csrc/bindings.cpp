// The one file that knows pybind11. It checks arrays once, releases the GIL around the core
// call and maps caller mistakes (std::invalid_argument) to ValueError. No logic lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <vector>

#include "anomaly_map.hpp"
#include "clahe.hpp"
#include "common.hpp"
#include "preprocess.hpp"

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
}

// ---- numeric kernels: knn, coreset, scoring --------------------------------------------
static void bind_numeric_kernels(py::module_& m) {
    (void)m;
}

PYBIND11_MODULE(_native, m) {
    m.doc() = "AutoWeld C++ core (private; use autoweld.native)";
    m.attr("__version__") = AUTOWELD_VERSION;
    m.def("has_avx2_fma", &autoweld::cpu_has_avx2_fma,
          "True when the kernels run their AVX2+FMA paths on this CPU.");
    m.def("hardware_threads", [] { return autoweld::resolve_threads(0); });
    bind_image_kernels(m);
    bind_numeric_kernels(m);
}
