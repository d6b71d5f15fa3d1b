// The CLAHE row and Lab conversion kernels each instruction set implements (clahe.cpp: scalar;
// clahe_avx2.cpp, clahe_avx512.cpp) and their dispatch. Internal to the core: clahe.cpp,
// preprocess.cpp, the ISA files and the tests include it. Declarations only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.hpp"

namespace autoweld {
struct ClaheTables;
}  // namespace autoweld

namespace autoweld::detail {
// One band of interpolation: rows whose two nearest tile rows are (ty1, ty2). Packs for every
// segment s (0..tiles_x) and grey value v the four LUT entries (ty1,tx1) (ty1,tx2) (ty2,tx1)
// (ty2,tx2) into one 32-bit word, so a pixel needs one lookup instead of four.
void clahe_pack_band(const ClaheTables& tables, int band, std::uint32_t* packed);
// The exact float interpolation of OpenCV for one row, from a band packed by clahe_pack_band:
// scalar and AVX2 flavours.
void clahe_row_scalar(const ClaheTables& tables, const std::uint32_t* packed, float ya,
                      float ya1, const std::uint8_t* src, std::uint8_t* dst);
// OpenCV's 8-bit BGR <-> Lab conversions (cvtColor COLOR_BGR2Lab / COLOR_Lab2BGR), bit-exact,
// on planes: interleaved BGR in, L/a/b planes out; L/a/b planes in, B/G/R planes out.
void bgr_to_lab_planes_scalar(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                              std::uint8_t* a, std::uint8_t* b);
void lab_planes_to_bgr_scalar(const std::uint8_t* l, const std::uint8_t* a,
                              const std::uint8_t* b, std::size_t n, std::uint8_t* out_b,
                              std::uint8_t* out_g, std::uint8_t* out_r);
void bgr_to_lab_planes_avx2(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                            std::uint8_t* a, std::uint8_t* b);
// AVX-512 flavours: only when cpu_has_avx512_vbmi().
void bgr_to_lab_planes_avx512(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                              std::uint8_t* a, std::uint8_t* b);
void lab_planes_to_bgr_avx512(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                              std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                              std::uint8_t* out_r);
void lab_planes_to_bgr_avx2(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                            std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                            std::uint8_t* out_r);
// The Lab tables widened to int32 for gathers.
struct LabTables {
    std::vector<std::int32_t> gamma, cbrt, inv_gamma, y_ify, ab_to_xz;  // y_ify: y | f(y) << 16
};
const LabTables& lab_tables_i32();
void clahe_row_avx2(const ClaheTables& tables, const std::uint32_t* packed, float ya, float ya1,
                    const std::uint8_t* src, std::uint8_t* dst);
// AVX-512 VBMI flavour: needs no packed table (looks the four LUTs of each segment up with byte
// permutes); `band` as in clahe_pack_band. Only when cpu_has_avx512_vbmi().
void clahe_row_avx512(const ClaheTables& tables, int band, float ya, float ya1,
                      const std::uint8_t* src, std::uint8_t* dst);

// The two kernel families, for pick_kernels (isa.hpp). The AVX-512 flavours need VBMI on top of
// Isa::avx512; without it an AVX-512 CPU gets the AVX2 flavour.
using BgrToLab = void (*)(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                          std::uint8_t* a, std::uint8_t* b);
using LabToBgr = void (*)(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                          std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                          std::uint8_t* out_r);
struct LabKernels {
    BgrToLab to_lab;
    LabToBgr to_bgr;
};
LabKernels lab_kernels(Isa cap);

// One CLAHE row: either from the packed band (packed_row) or, on AVX-512 VBMI, straight from
// the LUTs (permute_row, which needs no packed band; nullptr on every other flavour).
struct ClaheRowKernels {
    void (*packed_row)(const ClaheTables& tables, const std::uint32_t* packed, float ya, float ya1,
                       const std::uint8_t* src, std::uint8_t* dst);
    void (*permute_row)(const ClaheTables& tables, int band, float ya, float ya1,
                        const std::uint8_t* src, std::uint8_t* dst);
};
ClaheRowKernels clahe_row_kernels(Isa cap);

}  // namespace autoweld::detail
