// The fused kernels of kernels/*.cu compiled for the CPU emulator (cuda_emulator.h), as a shared
// library for prn_edge.kernels.emulator (ctypes). Two ways in, the two ways the GPU runs them:
// * prn_emu_launch(entry, grid, block, params): one kernel, parameters as for cuLaunchKernel
//   (an array of pointers to the argument values): the launches the CuPy path issues;
// * the plugins' host launchers, prn_proto_residual_enqueue / prn_msa_enqueue and their
//   workspace functions, unchanged from the .cu files (PRN_LAUNCH runs the grids here).
#include "cuda_emulator.h"

#include <string>
#include <tuple>
#include <utility>

#include "../multi_size_attention.cu"
#include "../proto_residual.cu"

namespace {

template <typename... P, size_t... I>
std::string invoke(void (*kernel)(P...), dim3 grid, dim3 block, void** params, std::index_sequence<I...>) {
    // Copies of the argument values, as the driver takes them at launch.
    auto args = std::make_tuple(*static_cast<std::remove_reference_t<P>*>(params[I])...);
    return cuda_emu::run_grid(grid, block, [&] { std::apply(kernel, args); });
}

template <typename... P>
std::string invoke(void (*kernel)(P...), dim3 grid, dim3 block, void** params) {
    return invoke(kernel, grid, block, params, std::index_sequence_for<P...>{});
}

struct Entry {
    const char* name;
    std::string (*run)(dim3, dim3, void**);
};

#define PRN_EMU_ENTRY(k) {#k, [](dim3 g, dim3 b, void** p) { return invoke(k, g, b, p); }}
const Entry kEntries[] = {
    PRN_EMU_ENTRY(prn_proto_dot_k8_f32), PRN_EMU_ENTRY(prn_proto_dot_k4_f32), PRN_EMU_ENTRY(prn_proto_dot_k8_f16),
    PRN_EMU_ENTRY(prn_proto_dot_k4_f16), PRN_EMU_ENTRY(prn_proto_argmin),     PRN_EMU_ENTRY(prn_proto_residual_f32),
    PRN_EMU_ENTRY(prn_proto_residual_f16), PRN_EMU_ENTRY(prn_msa_scores_f32), PRN_EMU_ENTRY(prn_msa_scores_f16),
    PRN_EMU_ENTRY(prn_msa_softmax),       PRN_EMU_ENTRY(prn_msa_output_f32),  PRN_EMU_ENTRY(prn_msa_output_f16),
};
#undef PRN_EMU_ENTRY

}  // namespace

extern "C" {

// The message of the last failed launch ("" if none); cleared by prn_emu_clear_error().
const char* prn_emu_error() { return cuda_emu::last_error().c_str(); }
void prn_emu_clear_error() { cuda_emu::last_error().clear(); }

// 0: ran; 1: the emulator reported an error (prn_emu_error()); 2: no such entry point.
int prn_emu_launch(const char* entry, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   void** params) {
    for (const Entry& e : kEntries) {
        if (std::string(entry) != e.name) continue;
        const std::string err = e.run(dim3(gx, gy, gz), dim3(bx, by, bz), params);
        if (err.empty()) return 0;
        if (cuda_emu::last_error().empty()) cuda_emu::last_error() = err;
        return 1;
    }
    cuda_emu::last_error() = std::string("no kernel named ") + entry;
    return 2;
}

// The entry points compiled in, separated by spaces (checked against KERNEL_FILES).
const char* prn_emu_entries() {
    static std::string names;
    if (names.empty())
        for (const Entry& e : kEntries) names += std::string(names.empty() ? "" : " ") + e.name;
    return names.c_str();
}

// Thread order of the emulated blocks: 0 = index order, else a shuffle per round from this seed.
void prn_emu_set_schedule_seed(unsigned long long seed) { cuda_emu::set_schedule_seed(seed); }

// IEEE binary16 bits <-> float32, n values, with the conversions the kernels use here.
void prn_emu_half_to_float(const unsigned short* h, float* f, size_t n) {
    for (size_t i = 0; i < n; ++i) f[i] = cuda_emu::half_to_float(h[i]);
}
void prn_emu_float_to_half(const float* f, unsigned short* h, size_t n) {
    for (size_t i = 0; i < n; ++i) h[i] = cuda_emu::float_to_half(f[i]);
}

}  // extern "C"
