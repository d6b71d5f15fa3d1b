// CLAHE (contrast limited adaptive histogram equalisation) on 8-bit images, bit-identical to
// OpenCV's createCLAHE(clipLimit, tileGridSize).apply on gray images. Python-free.
#pragma once

#include <cstddef>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

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
    explicit ClaheRowApplier(const ClaheTables& tables);
    // Row `y` of the image: `src` and `dst` point at `tables.width` bytes each.
    void apply(int y, const std::uint8_t* src, std::uint8_t* dst);

private:
    const ClaheTables& tables_;
    std::vector<std::uint32_t> packed_;
    int band_ = -1;
    float inv_tile_height_;
    bool simd_;
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
// parallel_for over [0, n) in chunks of `grain` handed out from an atomic counter. The calling
// thread works too and returns as soon as every chunk is done: a helper thread the OS has not
// scheduled yet (a busy machine) is not waited for; it finds no chunk left and exits on its own,
// touching only the shared counters it co-owns. `fn` is only ever called for a claimed chunk,
// and every claimed chunk finishes before this returns. The first exception is rethrown here.
template <class Fn>
void dynamic_parallel_for(std::size_t n, int threads, std::size_t grain, Fn&& fn) {
    if (n == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t chunks = (n + grain - 1) / grain;
    const std::size_t workers =
        std::min(static_cast<std::size_t>(resolve_threads(threads)), chunks);
    if (workers <= 1) {
        fn(std::size_t{0}, n);
        return;
    }
    struct Shared {
        std::atomic<std::size_t> next{0}, done{0};
        std::mutex error_mutex;
        std::exception_ptr error;
    };
    auto shared = std::make_shared<Shared>();
    auto* body = &fn;
    auto work = [shared, body, chunks, n, grain](std::atomic<bool>* started) {
        if (started) started->store(true);
        for (std::size_t c = shared->next.fetch_add(1); c < chunks;
             c = shared->next.fetch_add(1)) {
            try {
                (*body)(c * grain, std::min(n, (c + 1) * grain));
            } catch (...) {
                std::lock_guard<std::mutex> lock(shared->error_mutex);
                if (!shared->error) shared->error = std::current_exception();
            }
            shared->done.fetch_add(1, std::memory_order_acq_rel);
        }
    };
    std::vector<std::thread> helpers;
    std::vector<std::shared_ptr<std::atomic<bool>>> started;
    for (std::size_t w = 1; w < workers; ++w) {
        auto flag = std::make_shared<std::atomic<bool>>(false);
        try {
            helpers.emplace_back([work, flag] { work(flag.get()); });
            started.push_back(flag);
        } catch (...) {
            break;  // fewer helpers; the calling thread does the rest
        }
    }
    work(nullptr);
    while (shared->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
    for (std::size_t k = 0; k < helpers.size(); ++k) {
        if (started[k]->load())
            helpers[k].join();  // it has run: it is finishing its last fetch_add
        else
            helpers[k].detach();  // not yet scheduled: it will find nothing to do
    }
    if (shared->error) std::rethrow_exception(shared->error);
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
}  // namespace detail

}  // namespace autoweld
