// Pieces shared by the CPU gather kernels (triplane_sample, tensorf_vm_sample, voxel_sample):
// software prefetch of a row, huge-page advice and per-thread accumulation of a scattered
// gradient, and the spatial (Morton) processing order of incoherent points.
// CPU only: included by csrc/cpu/*.cpp, never by nvcc.
//
// Random points read a feature grid at random places, and once the grid outgrows the L2
// cache every tap is a cache miss (and, backward, every gradient update a read-modify-write
// miss). Processing the points in the Morton order of a coarse 3D grid makes consecutive
// points read and write neighbouring rows, since a 3D neighbourhood projects to a
// neighbourhood on every plane and line. The order is a stable counting sort (O(points));
// the kernels still write each point's outputs at its own index. Skipped for small problems
// and for points that are already coherent (e.g. samples along rays).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastfields/common.h"

namespace fastfields {

// Prefetch every cache line of [ptr, ptr + bytes), for reading (kWrite = 0) or writing (1).
template <int kWrite = 0>
inline void prefetch_bytes(const void* ptr, int64_t bytes) {
  const char* c = static_cast<const char*>(ptr);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, kWrite);
  __builtin_prefetch(c + bytes - 1, kWrite);
}

// Ask for transparent huge pages on a large buffer a kernel allocated and is about to fill
// (Linux, THP in "madvise" mode): scattered row writes then take far fewer page faults and
// TLB misses. Only the 2 MiB-aligned interior is advised; a no-op elsewhere. Disable with
// FASTFIELDS_CPU_HUGEPAGES=0.
inline void advise_hugepages(void* ptr, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* e = std::getenv("FASTFIELDS_CPU_HUGEPAGES");
    return !(e && e[0] == '0');
  }();
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (!enabled || ptr == nullptr || bytes < int64_t(2 * kHuge)) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(ptr) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

// A gradient scattered by points [0, total) into one contiguous buffer of `elems` elements
// (result, dtype T), accumulated without atomics: each "slot" is a zeroed buffer of the
// accumulation dtype A owned by one thread for a contiguous range of point positions, and the
// slots are summed into the result at the end. Fewer slots than threads when the buffers would
// cost more than the work they parallelise (work: the number of accumulations) or take more than
// 1 GB; slot 0 is the result itself when T is A. run(A* slot, begin, end) accumulates positions
// [begin, end). huge_pages: advise the extra slots onto huge pages (advise_hugepages).
template <typename T, typename A, typename Run>
void accumulate_in_slots(T* result, int64_t elems, int64_t total, int64_t work, const at::TensorOptions& options,
                         bool huge_pages, const Run& run) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t slots = std::min<int64_t>(threads, std::max<int64_t>(1, work / std::max<int64_t>(1, 2 * elems)));
  constexpr int64_t kMaxExtraBytes = int64_t(1) << 30;
  const int64_t max_extra = kMaxExtraBytes / std::max<int64_t>(1, elems * int64_t(sizeof(A)));
  slots = std::max<int64_t>(1, std::min<int64_t>({slots, max_extra + 1, total}));

  constexpr bool same = std::is_same<T, A>::value;
  const int64_t n_extra = same ? slots - 1 : slots;
  at::Tensor extra;
  if (n_extra > 0) {
    extra = at::empty({n_extra, elems}, options.dtype(c10::CppTypeToScalarType<A>::value));
    if (huge_pages) advise_hugepages(extra.data_ptr(), extra.nbytes());
  }
  A* extra_p = n_extra > 0 ? extra.mutable_data_ptr<A>() : nullptr;
  auto slot_buf = [&](int64_t s) -> A* {
    if constexpr (same) return s == 0 ? result : extra_p + (s - 1) * elems;
    return extra_p + s * elems;
  };
  at::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      A* slot = slot_buf(s);
      std::memset(slot, 0, sizeof(A) * static_cast<size_t>(elems));
      run(slot, total * s / slots, total * (s + 1) / slots);
    }
  });
  if (same && slots == 1) return;
  at::parallel_for(0, elems, 4096, [&](int64_t begin, int64_t end) {
    // Sum the slots in chunks through a small stack buffer to keep the loops vectorisable.
    constexpr int64_t kChunk = 1024;
    A tmp[kChunk];
    for (int64_t i0 = begin; i0 < end; i0 += kChunk) {
      const int64_t m = std::min<int64_t>(kChunk, end - i0);
      const A* first = slot_buf(0) + i0;  // may be the result itself
      for (int64_t i = 0; i < m; ++i) tmp[i] = first[i];
      for (int64_t s = 1; s < slots; ++s) {
        const A* __restrict__ src = slot_buf(s) + i0;
        for (int64_t i = 0; i < m; ++i) tmp[i] += src[i];
      }
      for (int64_t i = 0; i < m; ++i) result[i0 + i] = ff_store<T>(tmp[i]);
    }
  });
}

inline uint32_t morton_spread3(uint32_t v) {  // 10 bits -> every third bit
  v &= 0x3ffu;
  v = (v | (v << 16)) & 0x030000ffu;
  v = (v | (v << 8)) & 0x0300f00fu;
  v = (v | (v << 4)) & 0x030c30c3u;
  v = (v | (v << 2)) & 0x09249249u;
  return v;
}

template <typename A>
inline uint32_t morton_cell(A c, A scale, uint32_t cells) {
  const A f = (c + A(1)) * scale;  // [-1, 1] -> [0, cells]
  if (!(f > A(0))) return 0u;      // also NaN
  if (f >= static_cast<A>(cells)) return cells - 1;
  return static_cast<uint32_t>(f);
}

// Where the points are: point i = b * N + n of B batches (each batch has its own grid, so
// batches are never interleaved) is at xyz + b * sB + n * sN, its coordinates sD apart.
template <typename A>
struct PointSet {
  const A* xyz;
  int64_t B, N;
  int64_t sB, sN, sD;
  // b and n of point i (no division for one batch: it would cost more than the point's taps).
  FF_ALWAYS_INLINE void split(int64_t i, int64_t& b, int64_t& n) const {
    b = B == 1 ? 0 : i / N;
    n = i - b * N;
  }
  FF_ALWAYS_INLINE const A* at(int64_t b, int64_t n) const { return xyz + b * sB + n * sN; }
};

// Processing order of the points (empty: their own order) and their coordinates gathered in
// that order ([3] per point), so the kernels read them sequentially.
template <typename A>
struct PointOrder {
  std::vector<int32_t> order;  // (only point sets below 2^31 are ordered: 4 bytes a point, not 8)
  std::vector<A> xyz;
};

// The order for points reading a grid of grid_bytes per batch whose largest side has max_side
// texels; grid_dims = 2 for planes and lines (a cell of the 3D order reads a square of each
// plane), 3 for a volume (a cube of it).
template <typename A>
PointOrder<A> spatial_order(const PointSet<A>& pts, int64_t grid_bytes, int64_t max_side, int grid_dims) {
  PointOrder<A> result;
  const int64_t total = pts.B * pts.N;
  if (total < (int64_t(1) << 14) || total >= (int64_t(1) << 31) || grid_bytes < (int64_t(1) << 19)) return result;
  // Cells of at least 4 texels along the largest side, at most 32 per axis, and no finer than
  // needed for a cell's share of the grid to sit in L1 (~16 KB): finer cells only make the
  // sort's scatter wider (a 4 MB volume in 16^3 cells sorted slower than it then sampled).
  constexpr int64_t kCellBytes = int64_t(1) << 14;
  int bits = 0;
  while (bits < 5 && (int64_t(4) << bits) < max_side && (grid_bytes >> (grid_dims * bits)) > kCellBytes) ++bits;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total / 4096 + 1));
  while (bits > 0 && pts.B * (int64_t(1) << (3 * bits)) * threads > (int64_t(1) << 20)) --bits;
  if (bits == 0) return result;
  const uint32_t cells = 1u << bits;
  const int64_t K = int64_t(1) << (3 * bits);
  const int64_t nkeys = pts.B * K;
  const A scale = static_cast<A>(cells) * A(0.5);
  const int64_t sD = pts.sD;

  std::vector<uint32_t> keys(static_cast<size_t>(total));
  std::vector<int64_t> hist(static_cast<size_t>(threads * nkeys), 0);
  std::vector<int64_t> coherent(static_cast<size_t>(threads), 0);
  auto chunk_begin = [&](int64_t t) { return total * t / threads; };
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t* h = hist.data() + t * nkeys;
      int64_t same = 0;
      uint32_t prev = ~0u;
      const int64_t first = chunk_begin(t), last = chunk_begin(t + 1);  // not re-divided per point
      // Copies the loop's stores cannot alias (through references, each store to the
      // histogram or the order made the compiler reload the strides).
      const PointSet<A> set = pts;
      const int64_t sd = sD, k_per_batch = K;
      int64_t b, n;
      set.split(first, b, n);
      for (int64_t i = first; i < last; ++i) {
        const A* q = set.at(b, n);
        const uint32_t m = morton_spread3(morton_cell(q[0], scale, cells)) |
                           (morton_spread3(morton_cell(q[sd], scale, cells)) << 1) |
                           (morton_spread3(morton_cell(q[2 * sd], scale, cells)) << 2);
        const uint32_t key = static_cast<uint32_t>(b * k_per_batch) + m;
        keys[i] = key;
        ++h[key];
        same += key == prev;
        prev = key;
        if (++n == set.N) {
          n = 0;
          ++b;
        }
      }
      coherent[t] = same;
    }
  });
  int64_t same = 0;
  for (auto c : coherent) same += c;
  if (2 * same >= total) return result;  // already spatially coherent

  // Exclusive prefix over (key, thread): a stable order.
  int64_t run = 0;
  for (int64_t k = 0; k < nkeys; ++k) {
    for (int64_t t = 0; t < threads; ++t) {
      int64_t& h = hist[t * nkeys + k];
      const int64_t c = h;
      h = run;
      run += c;
    }
  }
  std::vector<int32_t>& order = result.order;
  order.resize(static_cast<size_t>(total));
  result.xyz.resize(static_cast<size_t>(3 * total));
  A* sx = result.xyz.data();
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t* h = hist.data() + t * nkeys;
      const int64_t first = chunk_begin(t), last = chunk_begin(t + 1);  // not re-divided per point
      // Copies the loop's stores cannot alias (through references, each store to the
      // histogram or the order made the compiler reload the strides).
      const PointSet<A> set = pts;
      const int64_t sd = sD;
      int64_t b, n;
      set.split(first, b, n);
      for (int64_t i = first; i < last; ++i) {
        const int64_t pos = h[keys[i]]++;
        order[pos] = static_cast<int32_t>(i);
        const A* q = set.at(b, n);
        sx[3 * pos] = q[0];
        sx[3 * pos + 1] = q[sd];
        sx[3 * pos + 2] = q[2 * sd];
        if (++n == set.N) {
          n = 0;
          ++b;
        }
      }
    }
  });
  return result;
}

// The points as a kernel walks them: position i is point order[i], its coordinates gathered at
// 3 * i (spatial order, for a grid large enough to need it), or point i itself. Position
// ranges are what the threads split; outputs are still written at each point's own index.
template <typename A>
class PointStream {
 public:
  PointStream(const PointSet<A>& pts, int64_t grid_bytes, int64_t max_side, int grid_dims)
      : pts_(pts), sorted_(spatial_order<A>(pts, grid_bytes, max_side, grid_dims)) {}

  // Consecutive positions are not consecutive points: outputs are scattered (worth prefetching).
  bool ordered() const { return !sorted_.order.empty(); }

  // The point at position i: its batch and index in it into b and n, its coordinates into pt;
  // false when one of them is not finite (such a point reads zeros and gets zero gradient).
  FF_ALWAYS_INLINE bool load(int64_t i, int64_t& b, int64_t& n, A pt[3]) const {
    if (ordered()) {
      pts_.split(sorted_.order[i], b, n);
      const A* c = sorted_.xyz.data() + 3 * i;
      pt[0] = c[0];
      pt[1] = c[1];
      pt[2] = c[2];
    } else {
      pts_.split(i, b, n);
      const A* c = pts_.at(b, n);
      pt[0] = c[0];
      pt[1] = c[pts_.sD];
      pt[2] = c[2 * pts_.sD];
    }
    return ff_isfinite(pt[0]) && ff_isfinite(pt[1]) && ff_isfinite(pt[2]);
  }

 private:
  PointSet<A> pts_;
  PointOrder<A> sorted_;
};

}  // namespace fastfields
