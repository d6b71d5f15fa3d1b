// The instruction sets the core has kernels for, the one place that asks the CPU which of them
// it runs, and the one way every kernel family is dispatched. Python-free.
//
// Kernels compiled for an ISA live in *_avx2.cpp / *_avx512.cpp (compiled with those flags) and
// may only be called on a CPU that runs that ISA. Every family (kNN panel / bound kernels,
// coreset update, CLAHE rows, Lab conversions, preprocess filters) is a struct of function
// pointers with one instance per flavour it has; `pick_kernels(cap, ...)` returns the best
// flavour at or below `cap` (the `isa` of KernelOptions or PreprocessConfig), so that a test
// forces the portable path by capping the ISA, through the same mechanism everywhere.
#pragma once

#include <string>

namespace autoweld {

// In increasing order: each one includes the ones before it.
//   portable: plain C++ (the compiler may still use SSE2, the x86-64 baseline).
//   avx2:     AVX2 + FMA.
//   avx512:   AVX-512 F, DQ, BW, VL (+ FMA), with the zmm state enabled by the OS.
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// The best ISA this CPU runs (checked once).
Isa best_isa();
inline bool isa_available(Isa isa) { return isa <= best_isa(); }
// AVX-512 VBMI (byte permutes) on top of Isa::avx512: the CLAHE row and Lab kernels' AVX-512
// flavours need it; on an avx512 CPU without it those families run their AVX2 flavour.
bool cpu_has_avx512_vbmi();
// AVX-512 BF16 (bf16 dot products) on top of Isa::avx512: the brute-force kNN index's first
// pass uses it where the CPU has it (knn_bf16_avx512.cpp).
bool cpu_has_avx512_bf16();

// "portable", "avx2", "avx512".
const char* isa_name(Isa isa);
// The ISA named `name` (as isa_name writes it), or best_isa() for "best"; throws
// std::invalid_argument for any other name.
Isa parse_isa(const std::string& name);
// Throws std::invalid_argument unless this CPU runs `isa`.
void require_isa(Isa isa);

// How one call runs (faiss's per-call SearchParameters): worker threads (<= 0: all hardware
// threads) and the highest ISA its kernels may use.
struct KernelOptions {
    int threads = 0;
    Isa isa = best_isa();
};

// The flavour of a kernel family for `cap`, which this CPU must run: `avx512` when cap allows
// it, else `avx2` when cap allows it, else `portable`. A family without an AVX-512 flavour
// passes its AVX2 one twice.
template <class Kernels>
Kernels pick_kernels(Isa cap, const Kernels& portable, const Kernels& avx2, const Kernels& avx512) {
    require_isa(cap);
    if (cap >= Isa::avx512) return avx512;
    if (cap >= Isa::avx2) return avx2;
    return portable;
}

}  // namespace autoweld
