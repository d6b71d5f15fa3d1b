// Tests of the shared plumbing: parallel_for covers every index exactly once, for any thread
// count, and rethrows a worker's exception after joining.
#include <atomic>
#include <stdexcept>
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
    CHECK_THROWS(autoweld::require(false, "x"), std::invalid_argument);
    CHECK(autoweld::resolve_threads(0) >= 1);
    CHECK(autoweld::resolve_threads(3) == 3);
    return autoweld_test::finish("test_common");
}
