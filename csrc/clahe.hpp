// CLAHE (contrast limited adaptive histogram equalisation) on 8-bit images, bit-identical to
// OpenCV's createCLAHE(clipLimit, tileGridSize).apply on gray images. Python-free.
#pragma once

#include <cstdint>
#include <vector>

#include "clahe_kernels.hpp"
#include "isa.hpp"

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
// same rows of `out` (row stride `width`). The best row kernel this CPU runs; same bytes on all.
void clahe_apply_rows(const ClaheTables& tables, const std::uint8_t* image, int row_begin,
                      int row_end, std::uint8_t* out);

// Applies tables row by row, keeping the packed table of the current band between calls (one
// per thread; cheap to construct). `isa` caps the row kernel (same bytes on every ISA).
class ClaheRowApplier {
public:
    explicit ClaheRowApplier(const ClaheTables& tables, Isa isa = best_isa());
    // Row `y` of the image: `src` and `dst` point at `tables.width` bytes each.
    void apply(int y, const std::uint8_t* src, std::uint8_t* dst);

private:
    const ClaheTables& tables_;
    std::vector<std::uint32_t> packed_;
    int band_ = -1;
    float inv_tile_height_;
    detail::ClaheRowKernels kernels_;
};

// CLAHE of a gray image: `out` (caller-allocated, height*width) may not alias `image`.
void clahe_gray(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
                int tiles_y, std::uint8_t* out, int threads);

// CLAHE of a BGR image (height*width*3, interleaved) on the L channel of OpenCV's 8-bit Lab, then
// back to BGR. Within one grey level of OpenCV's cvtColor(BGR2Lab) -> CLAHE on L -> cvtColor(
// Lab2BGR).
void clahe_bgr(const std::uint8_t* image, int height, int width, double clip_limit, int tiles_x,
               int tiles_y, std::uint8_t* out, int threads);

}  // namespace autoweld
