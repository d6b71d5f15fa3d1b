// The one file that knows pybind11. It checks arrays once, releases the GIL around the core
// call and maps caller mistakes (std::invalid_argument) to ValueError. No logic lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.hpp"

namespace py = pybind11;

#ifndef AUTOWELD_VERSION
#define AUTOWELD_VERSION "dev"
#endif

// ---- image kernels: clahe, preprocess, anomaly map -------------------------------------
static void bind_image_kernels(py::module_& m) {
    (void)m;
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
