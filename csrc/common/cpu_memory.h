#pragma once
// Large fresh CPU outputs: most of a memory-bound kernel's time would go to 4 KiB page faults
// (the OS zeroes each page on first touch): 17 ms of a 64 MiB output on the 2-core development
// machine. Asking for transparent huge pages and populating them in one call takes about 5 ms;
// huge pages faulted from two threads at once instead stalled now and then for 40-80 ms.
// Both calls are advice: where the kernel lacks them, pages fault in as before.
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#if !defined(MADV_POPULATE_WRITE)
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif
#endif

namespace fastnets {

inline void prefault_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
  if (bytes < 4 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace fastnets
