#include "isa.hpp"

#include <stdexcept>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace autoweld {

namespace {

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
// __builtin_cpu_supports checks CPUID and (in libgcc / compiler-rt) that the OS enabled the
// ymm / zmm state in XCR0.
Isa detect_isa() {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!avx2) return Isa::portable;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return avx512 ? Isa::avx512 : Isa::avx2;
}
bool detect_vbmi() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi");
}
// CPUID leaf 7, subleaf 1, EAX bit 5 (read directly: older compilers' __builtin_cpu_supports
// does not know the name); the zmm state is checked by detect_isa.
bool detect_bf16() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) == 0) return false;
    return (eax >> 5) & 1u;
}
#else
Isa detect_isa() { return Isa::portable; }
bool detect_vbmi() { return false; }
bool detect_bf16() { return false; }
#endif

}  // namespace

Isa best_isa() {
    static const Isa best = detect_isa();
    return best;
}

bool cpu_has_avx512_vbmi() {
    static const bool has = best_isa() == Isa::avx512 && detect_vbmi();
    return has;
}

bool cpu_has_avx512_bf16() {
    static const bool has = best_isa() == Isa::avx512 && detect_bf16();
    return has;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx2:
            return "avx2";
        case Isa::avx512:
            return "avx512";
        default:
            return "portable";
    }
}

Isa parse_isa(const std::string& name) {
    if (name == "best") return best_isa();
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512})
        if (name == isa_name(isa)) return isa;
    throw std::invalid_argument("isa must be 'best', 'portable', 'avx2' or 'avx512', got '" +
                                name + "'");
}

void require_isa(Isa isa) {
    if (!isa_available(isa))
        throw std::invalid_argument(std::string("isa ") + isa_name(isa) +
                                    " is not available on this CPU (best: " +
                                    isa_name(best_isa()) + ")");
}

}  // namespace autoweld
