// A minimal owning, 64-byte aligned, uninitialised array for packed operands and scratch.
#pragma once

#include <cstdlib>
#include <new>

#include "common.h"

namespace fastdc {

template <typename T>
class AlignedBuffer {
  public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(i64 n) { reset(n); }
    ~AlignedBuffer() { std::free(ptr_); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    // Drop the old contents and hold n elements (64-byte aligned: one cache line, two ymm).
    void reset(i64 n) {
        std::free(ptr_);
        ptr_ = nullptr;
        std::size_t bytes = static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(T);
        bytes = (bytes + 63) / 64 * 64;  // aligned_alloc needs a multiple of the alignment
        ptr_ = static_cast<T*>(std::aligned_alloc(64, bytes));
        if (ptr_ == nullptr) throw std::bad_alloc();
    }
    T* data() { return ptr_; }
    const T* data() const { return ptr_; }
    T& operator[](i64 i) { return ptr_[i]; }

  private:
    T* ptr_ = nullptr;
};

}  // namespace fastdc
