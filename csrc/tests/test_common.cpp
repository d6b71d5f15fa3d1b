// Tests of the shared plumbing: reflect101 matches OpenCV's BORDER_REFLECT_101, argument
// errors are std::invalid_argument, thread counts resolve, ISA names and caps.
// (Parallel loops: test_thread_pool.)
#include <stdexcept>

#include "check.hpp"
#include "common.hpp"
#include "isa.hpp"

int main() {
    // reflect101 = OpenCV BORDER_REFLECT_101: gfedcb|abcdefgh|gfedcba, folded for long pads
    CHECK(autoweld::reflect101(-1, 8) == 1 && autoweld::reflect101(8, 8) == 6);
    CHECK(autoweld::reflect101(-3, 8) == 3 && autoweld::reflect101(3, 8) == 3);
    CHECK(autoweld::reflect101(-9, 4) == 3 && autoweld::reflect101(7, 1) == 0);
    CHECK_THROWS(autoweld::require(false, "x"), std::invalid_argument);
    CHECK(autoweld::resolve_threads(0) >= 1);
    CHECK(autoweld::resolve_threads(3) == 3);
    // ISAs: ordered, named both ways, "best" is best_isa(); a cap above the CPU is refused, and
    // pick_kernels takes the best flavour at or below the cap.
    using autoweld::Isa;
    CHECK(autoweld::isa_available(Isa::portable));
    CHECK(!autoweld::isa_available(Isa::avx512) || autoweld::isa_available(Isa::avx2));
    CHECK(autoweld::parse_isa("best") == autoweld::best_isa());
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512})
        CHECK(autoweld::parse_isa(autoweld::isa_name(isa)) == isa);
    CHECK_THROWS(autoweld::parse_isa("auto"), std::invalid_argument);
    CHECK(autoweld::KernelOptions{}.isa == autoweld::best_isa());
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
        if (autoweld::isa_available(isa))
            CHECK(autoweld::pick_kernels(isa, 0, 1, 2) == static_cast<int>(isa));
        else
            CHECK_THROWS(autoweld::pick_kernels(isa, 0, 1, 2), std::invalid_argument);
    }
    CHECK(!autoweld::cpu_has_avx512_vbmi() || autoweld::best_isa() == Isa::avx512);
    return autoweld_test::finish("test_common");
}
