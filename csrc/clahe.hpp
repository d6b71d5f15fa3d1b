// CLAHE (contrast limited adaptive histogram equalisation) on 8-bit images, bit-identical to
// OpenCV's createCLAHE(clipLimit, tileGridSize).apply on gray images. Python-free.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "thread_pool.hpp"

namespace autoweld {

// The per-tile lookup tables of one image and the geometry that goes with them. Built by
// clahe_build_tables(); applied row by row by clahe_apply_rows() (so that preprocessing can
// fuse the LUT application with what follows).
struct ClaheTables {
    int width = 0, height = 0;    // of the image the tables were built for
    int tiles_x = 0, tiles_y = 0;
    int tile_width = 0, tile_height = 0;  // of the (possibly reflect-padded) tiles
    std::vector<std::uint8_t> lut;        // tiles_y * tiles_x rows of 256 entries
    // Horizontal interpolation, per column: the segment between two tile centres (0..tiles_x)
    // and the weights (exactly the float values OpenCV computes).
    std::vector<std::int32_t> column_segment;
    std::vector<float> column_weight, column_weight_complement;  // xa, 1 - xa
    // First column of every segment (tiles_x + 2 entries, the last one = width): the columns of
    // segment s are [segment_begin[s], segment_begin[s + 1]).
    std::vector<std::int32_t> segment_begin;
};

// Checks the arguments (std::invalid_argument naming the bad one) and builds the tables:
// histograms of the tiles (reflect-101 padded when the grid does not divide the image, as
// OpenCV does), clipping with OpenCV's redistribution, cumulative LUTs. clip_limit <= 0 means no
// clipping. `threads` <= 0 means all hardware threads.
void clahe_build_tables(const std::uint8_t* image, int height, int width, double clip_limit,
                        int tiles_x, int tiles_y, int threads, ClaheTables& tables);

// Applies the tables to rows [row_begin, row_end) of `image` (row stride `width`), writing the
// same rows of `out` (row stride `width`). Uses AVX2 when the CPU has it; same bytes either way.
void clahe_apply_rows(const ClaheTables& tables, const std::uint8_t* image, int row_begin,
                      int row_end, std::uint8_t* out);

// Applies tables row by row, keeping the packed table of the current band between calls (one
// per thread; cheap to construct).
class ClaheRowApplier {
public:
    // `portable`: the scalar row kernel even where AVX2 / AVX-512 exist (for tests).
    explicit ClaheRowApplier(const ClaheTables& tables, bool portable = false);
    // Row `y` of the image: `src` and `dst` point at `tables.width` bytes each.
    void apply(int y, const std::uint8_t* src, std::uint8_t* dst);

private:
    const ClaheTables& tables_;
    std::vector<std::uint32_t> packed_;
    int band_ = -1;
    float inv_tile_height_;
    bool simd_;
    bool vbmi_;
};

// CLAHE of a gray image: `out` (caller-allocated, height*width) may not alias `image`.
void clahe_gray(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
                int tiles_y, std::uint8_t* out, int threads);

// CLAHE of a BGR image (height*width*3, interleaved) on the L channel of OpenCV's 8-bit Lab, then
// back to BGR. Within one grey level of OpenCV's cvtColor(BGR2Lab) -> CLAHE on L -> cvtColor(
// Lab2BGR).
void clahe_bgr(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
               int tiles_y, std::uint8_t* out, int threads);

namespace detail {
// parallel_for over [0, n) in chunks of `grain` handed out from an atomic counter, on the
// persistent pool (thread_pool.hpp): the calling thread works too and returns as soon as every
// chunk is done; a leased worker the OS has not scheduled yet is not waited for. The first
// exception is rethrown after every chunk has finished.
template <class Fn>
void dynamic_parallel_for(std::size_t n, int threads, std::size_t grain, Fn&& fn) {
    pool::parallel_for_dynamic(n, threads, grain,
                               [&fn](std::size_t begin, std::size_t end) { fn(begin, end); });
}

// One band of interpolation: rows whose two nearest tile rows are (ty1, ty2). Packs for every
// segment s (0..tiles_x) and grey value v the four LUT entries (ty1,tx1) (ty1,tx2) (ty2,tx1)
// (ty2,tx2) into one 32-bit word, so a pixel needs one lookup instead of four.
void clahe_pack_band(const ClaheTables& tables, int band, std::uint32_t* packed);
// The exact float interpolation of OpenCV for one row, scalar and AVX2 flavours.
void clahe_row_scalar(const ClaheTables& tables, const std::uint32_t* packed, float ya,
                      float ya1, const std::uint8_t* src, std::uint8_t* dst);
// OpenCV's 8-bit BGR <-> Lab conversions (cvtColor COLOR_BGR2Lab / COLOR_Lab2BGR), bit-exact,
// on planes: interleaved BGR in, L/a/b planes out; L/a/b planes in, B/G/R planes out.
void bgr_to_lab_planes(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l, std::uint8_t* a,
                       std::uint8_t* b);
void lab_planes_to_bgr(const std::uint8_t* l, const std::uint8_t* a, const std::uint8_t* b,
                       std::size_t n, std::uint8_t* out_b, std::uint8_t* out_g,
                       std::uint8_t* out_r);
void bgr_to_lab_planes_scalar(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                              std::uint8_t* a, std::uint8_t* b);
void lab_planes_to_bgr_scalar(const std::uint8_t* l, const std::uint8_t* a,
                              const std::uint8_t* b, std::size_t n, std::uint8_t* out_b,
                              std::uint8_t* out_g, std::uint8_t* out_r);
void bgr_to_lab_planes_avx2(const std::uint8_t* bgr, std::size_t n, std::uint8_t* l,
                            std::uint8_t* a, std::uint8_t* b);
// Only when cpu_has_avx512_vbmi().
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
}  // namespace detail

}  // namespace autoweld
