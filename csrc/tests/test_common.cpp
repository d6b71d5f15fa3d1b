// Tests of the shared plumbing: reflect101 matches OpenCV's BORDER_REFLECT_101, argument
// errors are std::invalid_argument, thread counts resolve. (Parallel loops: test_thread_pool.)
#include <stdexcept>

#include "check.hpp"
#include "common.hpp"

int main() {
    // reflect101 = OpenCV BORDER_REFLECT_101: gfedcb|abcdefgh|gfedcba, folded for long pads
    CHECK(autoweld::reflect101(-1, 8) == 1 && autoweld::reflect101(8, 8) == 6);
    CHECK(autoweld::reflect101(-3, 8) == 3 && autoweld::reflect101(3, 8) == 3);
    CHECK(autoweld::reflect101(-9, 4) == 3 && autoweld::reflect101(7, 1) == 0);
    CHECK_THROWS(autoweld::require(false, "x"), std::invalid_argument);
    CHECK(autoweld::resolve_threads(0) >= 1);
    CHECK(autoweld::resolve_threads(3) == 3);
    return autoweld_test::finish("test_common");
}
