// launcher.cpp: one CUDA C source (CUDA_HOST_SOURCE, a quoted path) built for the CPU on
// cuda_host.h, and the C entry points that launch its kernels from Python (ctypes).
// CUDA_HOST_KERNELS lists the kernels as CUDA_HOST_KERNEL(name) CUDA_HOST_KERNEL(name) ...
#include "cuda_host.h"

#include CUDA_HOST_SOURCE

namespace {

#define CUDA_HOST_KERNEL(name) \
    ::cuda_host::Kernel{#name, ::cuda_host::signature(name), &::cuda_host::launch_kernel<name>},
const ::cuda_host::Kernel kernels[] = {CUDA_HOST_KERNELS};
#undef CUDA_HOST_KERNEL

const ::cuda_host::Kernel* find(const char* name) {
    for (const auto& k : kernels)
        if (std::strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

}  // namespace

// The parameter type codes of kernel `name` (cuda_host::type_code), or null if there is none.
extern "C" const char* cuda_host_signature(const char* name) {
    const auto* k = find(name);
    return k ? k->signature.c_str() : nullptr;
}

// Launch kernel `name` on grid[3] x block[3] with args[i] pointing at its i-th argument (as
// cudaLaunchKernel takes them). Returns 0, or 1 with the reason in error[error_size].
extern "C" int cuda_host_launch(const char* name, const unsigned* grid, const unsigned* block,
                                void** args, char* error, int error_size) {
    const auto* k = find(name);
    const std::string why = k ? k->launch({grid[0], grid[1], grid[2]},
                                          {block[0], block[1], block[2]}, args)
                              : std::string("no kernel named ") + name;
    std::snprintf(error, std::size_t(error_size), "%s", why.c_str());
    return why.empty() ? 0 : 1;
}
