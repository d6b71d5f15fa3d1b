// CLAHE core: constant images, a hand-checked tiny case, scalar == AVX2 rows, the Lab tables
// round trip, bad arguments.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "clahe.hpp"
#include "clahe_kernels.hpp"
#include "isa.hpp"
#include "thread_pool.hpp"
#include "common.hpp"

using autoweld::ClaheTables;

int main() {
    // A constant image: every tile's histogram is one spike; with clip 0 the LUT maps the value
    // to 255 (cumulative count == tile area at and above it).
    {
        std::vector<std::uint8_t> img(32 * 48, 100), out(img.size());
        autoweld::clahe_gray(img.data(), 32, 48, 0.0, 8, 8, out.data(), 2);
        bool all = true;
        for (auto v : out) all = all && v == 255;
        CHECK(all);
        // With clipping at 2.0 the spike is cut and spread: the value maps lower.
        autoweld::clahe_gray(img.data(), 32, 48, 2.0, 8, 8, out.data(), 2);
        CHECK(out[0] < 255 && out[0] > 0);
    }
    // 1x1 grid, no clip: plain histogram equalisation, lut[v] = round(255 * cdf(v) / n).
    {
        const std::uint8_t img[4] = {0, 10, 10, 200};
        std::uint8_t out[4];
        autoweld::clahe_gray(img, 2, 2, 0.0, 1, 1, out, 1);
        CHECK(out[0] == 64);   // 255 * 1/4 = 63.75
        CHECK(out[1] == 191);  // 255 * 3/4 = 191.25
        CHECK(out[2] == 191);
        CHECK(out[3] == 255);
    }
    // Scalar and AVX2 rows give the same bytes (when the CPU has AVX2).
    {
        const int h = 61, w = 83;
        std::vector<std::uint8_t> img(h * w);
        std::uint32_t state = 12345;
        for (auto& v : img) {
            state = state * 1664525u + 1013904223u;
            v = static_cast<std::uint8_t>((state >> 24) / 2 + (&v - img.data()) % w);
        }
        ClaheTables t;
        autoweld::clahe_build_tables(img.data(), h, w, 3.0, 5, 3, 1, t);
        std::vector<std::uint32_t> packed((t.tiles_x + 1) * 256);
        autoweld::detail::clahe_pack_band(t, 1, packed.data());
        std::vector<std::uint8_t> a(w), b(w);
        autoweld::detail::clahe_row_scalar(t, packed.data(), 0.3f, 0.7f, img.data(), a.data());
        if (autoweld::isa_available(autoweld::Isa::avx2)) {
            autoweld::detail::clahe_row_avx2(t, packed.data(), 0.3f, 0.7f, img.data(), b.data());
            CHECK(a == b);
        }
        // The AVX-512 VBMI row kernel (byte-permute LUTs, masked tails) gives the same bytes, for
        // every band and for rows that straddle every segment.
        if (autoweld::cpu_has_avx512_vbmi()) {
            for (int band = 0; band <= t.tiles_y; ++band) {
                autoweld::detail::clahe_pack_band(t, band, packed.data());
                for (float ya : {0.0f, 0.3f, 0.5f, 0.99f}) {
                    for (int y = 0; y < h; y += 7) {
                        const std::uint8_t* row = img.data() + y * w;
                        autoweld::detail::clahe_row_scalar(t, packed.data(), ya, 1.0f - ya, row,
                                                           a.data());
                        autoweld::detail::clahe_row_avx512(t, band, ya, 1.0f - ya, row, b.data());
                        CHECK(a == b);
                    }
                }
            }
        }
        // Threads do not change the result.
        std::vector<std::uint8_t> o1(h * w), o3(h * w);
        autoweld::clahe_gray(img.data(), h, w, 3.0, 5, 3, o1.data(), 1);
        autoweld::clahe_gray(img.data(), h, w, 3.0, 5, 3, o3.data(), 3);
        CHECK(o1 == o3);
    }
    // Lab: grey stays grey through the round trip; white and black are fixed points.
    {
        const std::uint8_t bgr[9] = {0, 0, 0, 255, 255, 255, 128, 128, 128};
        std::uint8_t l[3], a[3], b[3], ob[3], og[3], orr[3];
        autoweld::detail::bgr_to_lab_planes_scalar(bgr, 3, l, a, b);
        CHECK(l[0] == 0 && l[1] == 255);
        CHECK(a[1] == 128 && b[1] == 128 && a[2] == 128 && b[2] == 128);
        autoweld::detail::lab_planes_to_bgr_scalar(l, a, b, 3, ob, og, orr);
        for (int i = 0; i < 3; ++i) {
            CHECK_NEAR(ob[i], bgr[3 * i], 1);
            CHECK_NEAR(og[i], bgr[3 * i + 1], 1);
            CHECK_NEAR(orr[i], bgr[3 * i + 2], 1);
        }
    }
    // Lab: the dispatched (AVX2 where available) conversions equal the scalar ones on many
    // colours and Lab triplets, including the block tails.
    {
        const std::size_t n = 4099;
        std::vector<std::uint8_t> bgr(3 * n), p1(3 * n), p2(3 * n), q1(3 * n), q2(3 * n);
        std::uint32_t state = 99;
        for (auto& v : bgr) {
            state = state * 1664525u + 1013904223u;
            v = static_cast<std::uint8_t>(state >> 24);
        }
        autoweld::detail::bgr_to_lab_planes_scalar(bgr.data(), n, p1.data(), p1.data() + n,
                                                   p1.data() + 2 * n);
        const autoweld::detail::LabKernels lab = autoweld::detail::lab_kernels(autoweld::best_isa());
        lab.to_lab(bgr.data(), n, p2.data(), p2.data() + n, p2.data() + 2 * n);
        CHECK(p1 == p2);
        // Inverse on arbitrary Lab bytes (not only those that come from sRGB).
        autoweld::detail::lab_planes_to_bgr_scalar(bgr.data(), bgr.data() + n,
                                                   bgr.data() + 2 * n, n, q1.data(),
                                                   q1.data() + n, q1.data() + 2 * n);
        lab.to_bgr(bgr.data(), bgr.data() + n, bgr.data() + 2 * n, n, q2.data(), q2.data() + n,
                   q2.data() + 2 * n);
        CHECK(q1 == q2);
    }
    // Every one of the 2^24 colours: the AVX-512 VBMI and AVX2 forward conversions give the
    // scalar bytes (in blocks of 2^20 colours; 2^20 - 5 per call to exercise the tails too).
    for (int path = 0; path < 2; ++path) {
        if (path == 0 && !autoweld::cpu_has_avx512_vbmi()) continue;
        if (path == 1 && !autoweld::isa_available(autoweld::Isa::avx2)) continue;
        const std::size_t block = (std::size_t{1} << 20) - 5;
        std::vector<std::uint8_t> bgr(3 * block), p1(3 * block), p2(3 * block);
        bool same = true;
        for (std::size_t first = 0; first < (std::size_t{1} << 24); first += block) {
            const std::size_t n = std::min(block, (std::size_t{1} << 24) - first);
            for (std::size_t k = 0; k < n; ++k) {
                const std::size_t c = first + k;
                bgr[3 * k] = static_cast<std::uint8_t>(c);
                bgr[3 * k + 1] = static_cast<std::uint8_t>(c >> 8);
                bgr[3 * k + 2] = static_cast<std::uint8_t>(c >> 16);
            }
            autoweld::detail::bgr_to_lab_planes_scalar(bgr.data(), n, p1.data(), p1.data() + n,
                                                       p1.data() + 2 * n);
            if (path == 0)
                autoweld::detail::bgr_to_lab_planes_avx512(bgr.data(), n, p2.data(),
                                                           p2.data() + n, p2.data() + 2 * n);
            else
                autoweld::detail::bgr_to_lab_planes_avx2(bgr.data(), n, p2.data(), p2.data() + n,
                                                         p2.data() + 2 * n);
            same = same && std::equal(p1.begin(), p1.begin() + 3 * n, p2.begin());
        }
        CHECK(same);
    }
    // Every Lab byte triplet (2^24, not only those that come from sRGB): the AVX-512 VBMI and
    // AVX2 inverse conversions give the scalar bytes.
    for (int path = 0; path < 2; ++path) {
        if (path == 0 && !autoweld::cpu_has_avx512_vbmi()) continue;
        if (path == 1 && !autoweld::isa_available(autoweld::Isa::avx2)) continue;
        const std::size_t block = (std::size_t{1} << 20) - 5;
        std::vector<std::uint8_t> lab(3 * block), o1(3 * block), o2(3 * block);
        bool same = true;
        for (std::size_t first = 0; first < (std::size_t{1} << 24); first += block) {
            const std::size_t n = std::min(block, (std::size_t{1} << 24) - first);
            for (std::size_t k = 0; k < n; ++k) {
                const std::size_t c = first + k;
                lab[k] = static_cast<std::uint8_t>(c >> 16);
                lab[block + k] = static_cast<std::uint8_t>(c);
                lab[2 * block + k] = static_cast<std::uint8_t>(c >> 8);
            }
            const std::uint8_t* L = lab.data();
            const std::uint8_t* A = lab.data() + block;
            const std::uint8_t* B = lab.data() + 2 * block;
            autoweld::detail::lab_planes_to_bgr_scalar(L, A, B, n, o1.data(), o1.data() + block,
                                                       o1.data() + 2 * block);
            if (path == 0)
                autoweld::detail::lab_planes_to_bgr_avx512(L, A, B, n, o2.data(),
                                                           o2.data() + block,
                                                           o2.data() + 2 * block);
            else
                autoweld::detail::lab_planes_to_bgr_avx2(L, A, B, n, o2.data(), o2.data() + block,
                                                         o2.data() + 2 * block);
            for (int ch = 0; ch < 3; ++ch)
                same = same && std::equal(o1.begin() + ch * block, o1.begin() + ch * block + n,
                                          o2.begin() + ch * block);
        }
        CHECK(same);
    }
    // pool::parallel_for_dynamic: every index exactly once for any thread count and grain; a chunk's
    // exception reaches the caller.
    for (int threads : {1, 2, 5}) {
        for (std::size_t grain : {std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
            std::vector<std::atomic<int>> hits(997);
            autoweld::pool::parallel_for_dynamic(hits.size(), threads, grain,
                                                 [&](std::size_t b, std::size_t e) {
                                                     for (std::size_t i = b; i < e; ++i) hits[i]++;
                                                 });
            bool once = true;
            for (auto& h : hits) once = once && h.load() == 1;
            CHECK(once);
        }
        CHECK_THROWS(autoweld::pool::parallel_for_dynamic(
                         100, threads, 3,
                         [](std::size_t, std::size_t e) {
                             if (e > 50) throw std::invalid_argument("chunk");
                         }),
                     std::invalid_argument);
    }
    // Bad arguments.
    {
        std::uint8_t px[4] = {0, 1, 2, 3}, out[4];
        CHECK_THROWS(autoweld::clahe_gray(px, 0, 4, 2.0, 8, 8, out, 1), std::invalid_argument);
        CHECK_THROWS(autoweld::clahe_gray(px, 2, 2, 2.0, 0, 8, out, 1), std::invalid_argument);
        CHECK_THROWS(autoweld::clahe_gray(px, 2, 2, 1.0 / 0.0, 8, 8, out, 1),
                     std::invalid_argument);
        CHECK_THROWS(autoweld::clahe_gray(nullptr, 2, 2, 2.0, 8, 8, out, 1),
                     std::invalid_argument);
    }
    return autoweld_test::finish("test_clahe");
}
