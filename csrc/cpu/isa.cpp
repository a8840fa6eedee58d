// Run-time choice of the SIMD path (see common.h): CPU feature checks and FASTDC_CPU_ISA.

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common.h"

namespace fastdc {

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

std::string isa_missing(Isa isa) {
    std::string missing;
#if FASTDC_X86
    // __builtin_cpu_supports also checks that the OS saves the ymm / zmm registers (XCR0).
    if (isa >= Isa::avx2 && !__builtin_cpu_supports("avx2")) missing += " avx2";
    if (isa >= Isa::avx2 && !__builtin_cpu_supports("fma")) missing += " fma";
    if (isa >= Isa::avx512 && !__builtin_cpu_supports("avx512f")) missing += " avx512f";
#else
    if (isa >= Isa::avx2) missing += " x86-64";
#endif
    return missing.empty() ? missing : missing.substr(1);
}

namespace {

Isa widest_isa() {
    for (Isa isa : {Isa::avx512, Isa::avx2}) {
        if (isa_missing(isa).empty()) return isa;
    }
    return Isa::generic;
}

Isa parse_isa(const std::string& name, const char* source) {
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512}) {
        if (name != isa_name(isa)) continue;
        const std::string missing = isa_missing(isa);
        if (!missing.empty()) {
            throw std::invalid_argument(std::string(source) + "=" + name + ": this CPU lacks " +
                                        missing + "; use a narrower path (generic, avx2) or "
                                        "unset it to take the widest one available");
        }
        return isa;
    }
    throw std::invalid_argument(std::string(source) + "=" + name +
                                " is not a SIMD path; use generic, avx2 or avx512");
}

Isa isa_from_environment() {
    for (const char* var : {"FASTDC_CPU_ISA", "FASTDC_CPU_SIMD"}) {
        const char* value = std::getenv(var);
        if (value != nullptr && *value != '\0') return parse_isa(value, var);
    }
    return widest_isa();
}

}  // namespace

Isa default_isa() {
    static const Isa isa = isa_from_environment();  // a throw leaves it unset: retried
    return isa;
}

Isa resolve_isa(const std::string& name) {
    if (name.empty() || name == "auto") return default_isa();
    return parse_isa(name, "isa");
}

}  // namespace fastdc
