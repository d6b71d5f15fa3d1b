// Tests of the shared plumbing: parallel_for covers every index exactly once, for any thread
// count, rethrows a worker's exception after joining, and survives thread creation failing;
// reflect101 matches OpenCV's BORDER_REFLECT_101.
#include <atomic>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "check.hpp"
#include "common.hpp"

int main() {
    for (int threads : {1, 2, 3, 8}) {
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
            std::vector<std::atomic<int>> hits(n);
            autoweld::parallel_for(n, threads, [&](std::size_t b, std::size_t e) {
                for (std::size_t i = b; i < e; ++i) hits[i]++;
            });
            bool once = true;
            for (auto& h : hits) once = once && h.load() == 1;
            CHECK(once);
        }
    }
    CHECK_THROWS(autoweld::parallel_for(100, 4,
                                        [](std::size_t b, std::size_t) {
                                            if (b > 0) throw std::runtime_error("worker");
                                        }),
                 std::runtime_error);
    // Thread creation fails after `ok` threads (a process out of threads): no std::terminate,
    // the started threads are joined and the caller runs the rest; every index exactly once.
    for (int ok : {0, 1, 3}) {
        std::vector<std::atomic<int>> hits(1000);
        int spawned = 0;
        auto failing_spawn = [&](auto&& f, std::size_t b, std::size_t e) {
            if (spawned >= ok)
                throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
            ++spawned;
            return std::thread(f, b, e);
        };
        autoweld::parallel_for(
            hits.size(), 8,
            [&](std::size_t b, std::size_t e) {
                for (std::size_t i = b; i < e; ++i) hits[i]++;
            },
            failing_spawn);
        bool once = true;
        for (auto& h : hits) once = once && h.load() == 1;
        CHECK(once);
        CHECK(spawned == ok);
    }
    // ... and a worker's exception still reaches the caller in that case
    CHECK_THROWS(autoweld::parallel_for(
                     100, 4,
                     [](std::size_t b, std::size_t) {
                         if (b > 0) throw std::runtime_error("worker");
                     },
                     [](auto&&, std::size_t, std::size_t) -> std::thread {
                         throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
                     }),
                 std::runtime_error);
    // reflect101 = OpenCV BORDER_REFLECT_101: gfedcb|abcdefgh|gfedcba, folded for long pads
    CHECK(autoweld::reflect101(-1, 8) == 1 && autoweld::reflect101(8, 8) == 6);
    CHECK(autoweld::reflect101(-3, 8) == 3 && autoweld::reflect101(3, 8) == 3);
    CHECK(autoweld::reflect101(-9, 4) == 3 && autoweld::reflect101(7, 1) == 0);
    CHECK_THROWS(autoweld::require(false, "x"), std::invalid_argument);
    CHECK(autoweld::resolve_threads(0) >= 1);
    CHECK(autoweld::resolve_threads(3) == 3);
    return autoweld_test::finish("test_common");
}
