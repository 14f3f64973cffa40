// kv_index.h: the one place that maps a chunk element to a paged-KV-cache element.
//
// Used by the CUDA kernel (kvbucket_cuda.cu), by the host binding (binding.cpp) and by the
// host test harness (tests/cuda/host_harness.cpp). cuda/kv_index.py mirrors it line by line;
// keep the two in step (tests/cuda/test_host_harness.py runs this file against the mirror).
//
// Chunk buffer: [num_layers, 2, tokens, num_heads, head_size], tokens = blocks * block_size,
// contiguous. One "row" is head_size elements of one (layer, k/v, token, head); every paged
// layout below keeps a row contiguous, so the copy is row by row, in bytes (dtype-agnostic).
//
// Paged layouts, one tensor per layer (names as in kv_index.py):
//   KV_FIRST      "kv_first"      [2, num_blocks, block_size, num_heads, head_size]
//   BLOCKS_FIRST  "blocks_first"  [num_blocks, 2, block_size, num_heads, head_size]
//   CPU           "cpu"           [num_blocks, num_heads, block_size, 2 * head_size], read as
//                                 [num_blocks, num_heads, 2, block_size, head_size] (vLLM 0.32
//                                 CPU_ATTN views each (block, head) page as K rows then V rows)
//   BHNC          "bhnc"          [num_blocks, num_heads, block_size, 2 * head_size], any strides,
//                                 K = [..., :head_size], V = [..., head_size:] (vLLM >= 0.32 per-layer
//                                 view for GPU backends, whatever VLLM_KV_CACHE_LAYOUT is)
// Tensor strides are taken as given, so views into a cross-layer allocation work too;
// only the head_size axis must be contiguous.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define KV_HD __host__ __device__ __forceinline__
#else
#define KV_HD inline
#endif

enum KvLayout : int32_t { KV_FIRST = 0, KV_BLOCKS_FIRST = 1, KV_CPU = 2, KV_BHNC = 3 };

enum KvStatus : int32_t {
  KV_OK = 0,
  KV_BAD_LAYOUT = 1,     // unknown layout value
  KV_BAD_RANK = 2,       // tensor rank does not match the layout
  KV_BAD_SHAPE = 3,      // the K/V axis is not 2, or the content axis is odd
  KV_NOT_CONTIGUOUS = 4  // the head_size axis (or the CPU layout's page) is not contiguous
};

// Element strides of one layer's cache along the semantic axes; head_size is stride 1.
struct KvStrides {
  int64_t kv, block, token, head;
};

// Sizes of one layer's cache (all layers of a call share them).
struct KvDims {
  int64_t num_blocks, block_size, num_heads, head_size;
};

// Reads a layer tensor's shape/strides (in elements) for `layout` into strides + dims.
KV_HD int32_t kv_describe(int32_t layout, int32_t ndim, const int64_t* shape, const int64_t* stride,
                          KvStrides* s, KvDims* d) {
  if (layout == KV_FIRST || layout == KV_BLOCKS_FIRST) {
    if (ndim != 5) return KV_BAD_RANK;
    const int kv_axis = layout == KV_FIRST ? 0 : 1;
    const int block_axis = 1 - kv_axis;
    if (shape[kv_axis] != 2) return KV_BAD_SHAPE;
    if (stride[4] != 1 && shape[4] != 1) return KV_NOT_CONTIGUOUS;
    *d = KvDims{shape[block_axis], shape[2], shape[3], shape[4]};
    *s = KvStrides{stride[kv_axis], stride[block_axis], stride[2], stride[3]};
    return KV_OK;
  }
  if (layout == KV_CPU || layout == KV_BHNC) {
    if (ndim != 4) return KV_BAD_RANK;
    if (shape[3] % 2 != 0) return KV_BAD_SHAPE;
    const int64_t head_size = shape[3] / 2;
    *d = KvDims{shape[0], shape[2], shape[1], head_size};
    if (stride[3] != 1) return KV_NOT_CONTIGUOUS;
    if (layout == KV_BHNC) {
      *s = KvStrides{head_size, stride[0], stride[2], stride[1]};
      return KV_OK;
    }
    // CPU_ATTN re-views a (block, head) page [block_size, 2 * head_size] as
    // [2 * block_size, head_size]: the page must be dense.
    if (stride[2] != 2 * head_size && shape[2] != 1) return KV_NOT_CONTIGUOUS;
    *s = KvStrides{shape[2] * head_size, stride[0], head_size, stride[1]};
    return KV_OK;
  }
  return KV_BAD_LAYOUT;
}

// Element offset (from the layer tensor's first element) of row (block, kv, token, head).
KV_HD int64_t kv_cache_row(const KvStrides& s, int64_t block, int64_t kv, int64_t token, int64_t head) {
  return block * s.block + kv * s.kv + token * s.token + head * s.head;
}

// Row index in the chunk [num_layers, 2, tokens, num_heads, head_size] (times head_size = element).
KV_HD int64_t kv_chunk_row(const KvDims& d, int64_t num_chunk_blocks, int64_t layer, int64_t kv,
                           int64_t token, int64_t head) {
  const int64_t tokens = num_chunk_blocks * d.block_size;
  return ((layer * 2 + kv) * tokens + token) * d.num_heads + head;
}

// Largest copy word (1..16 bytes) that divides every byte quantity OR-ed into `bits`
// (row bytes, stride bytes, buffer addresses).
KV_HD int32_t kv_word_bytes(uint64_t bits) {
  int32_t w = 16;
  while (w > 1 && (bits & (uint64_t)(w - 1)) != 0) w >>= 1;
  return w;
}

// Everything one launch needs; passed to the kernel by value.
struct KvCopyArgs {
  char* const* layer_ptrs;   // [num_layers] base address of each layer's cache (device-visible)
  char* chunk;               // [num_layers, 2, tokens, num_heads, head_size], device-visible
  const int64_t* block_ids;  // [num_chunk_blocks] cache block of each chunk block
  KvStrides strides;         // elements
  KvDims dims;
  int64_t num_layers, num_chunk_blocks, elem_bytes;
  int32_t to_chunk;  // 1: cache -> chunk (gather), 0: chunk -> cache (scatter)
};

// Copy word for a launch: divides the row bytes, every stride in bytes and every address.
// host_layer_ptrs: the same addresses as a.layer_ptrs, readable on the host.
KV_HD int32_t kv_pick_word(const KvCopyArgs& a, const char* const* host_layer_ptrs) {
  uint64_t bits = (uint64_t)(a.dims.head_size * a.elem_bytes) | (uint64_t)(uintptr_t)a.chunk;
  bits |= (uint64_t)(a.strides.kv * a.elem_bytes) | (uint64_t)(a.strides.block * a.elem_bytes);
  bits |= (uint64_t)(a.strides.token * a.elem_bytes) | (uint64_t)(a.strides.head * a.elem_bytes);
  for (int64_t l = 0; l < a.num_layers; ++l) bits |= (uint64_t)(uintptr_t)host_layer_ptrs[l];
  return kv_word_bytes(bits);
}

// Work split: one group per (layer, kv, chunk block). A group's chunk bytes are one
// contiguous run; inside it, one item per copy word, ordered (token, head, word), so
// neighbouring threads touch neighbouring chunk bytes.
KV_HD int64_t kv_num_groups(const KvCopyArgs& a) { return a.num_layers * 2 * a.num_chunk_blocks; }

KV_HD int64_t kv_words_per_group(const KvCopyArgs& a, int32_t word) {
  return a.dims.block_size * a.dims.num_heads * (a.dims.head_size * a.elem_bytes / word);
}

// First byte of a group in the chunk and in the cache.
struct KvGroup {
  char* chunk;
  char* cache;
};

KV_HD KvGroup kv_group(const KvCopyArgs& a, int64_t group) {
  const int64_t layer = group / (2 * a.num_chunk_blocks);
  const int64_t kv = (group / a.num_chunk_blocks) % 2;
  const int64_t b = group % a.num_chunk_blocks;
  const int64_t chunk_row = kv_chunk_row(a.dims, a.num_chunk_blocks, layer, kv, b * a.dims.block_size, 0);
  const int64_t cache_row = kv_cache_row(a.strides, a.block_ids[b], kv, 0, 0);
  return KvGroup{a.chunk + chunk_row * a.dims.head_size * a.elem_bytes,
                 a.layer_ptrs[layer] + cache_row * a.elem_bytes};
}

// Copies word `item` of a group (item < kv_words_per_group < 2^31, checked by the launcher).
// Offsets are linear, so row (token, head) of the group is kv_cache_row(s, 0, 0, token, head)
// past the group's first cache row. Word is a trivially copyable type of the chosen width.
template <typename Word>
KV_HD void kv_copy_item(const KvCopyArgs& a, const KvGroup& g, uint32_t item) {
  const uint32_t per_row = (uint32_t)(a.dims.head_size * a.elem_bytes / (int64_t)sizeof(Word));
  const uint32_t word = item % per_row;
  const uint32_t row = item / per_row;
  const uint32_t head = row % (uint32_t)a.dims.num_heads;
  const uint32_t token = row / (uint32_t)a.dims.num_heads;
  char* chunk_p = g.chunk + (int64_t)item * (int64_t)sizeof(Word);
  char* cache_p = g.cache + kv_cache_row(a.strides, 0, 0, token, head) * a.elem_bytes +
                  (int64_t)word * (int64_t)sizeof(Word);
  if (a.to_chunk) {
    *reinterpret_cast<Word*>(chunk_p) = *reinterpret_cast<const Word*>(cache_p);
  } else {
    *reinterpret_cast<Word*>(cache_p) = *reinterpret_cast<const Word*>(chunk_p);
  }
}

// Copy words of each width; 16 bytes becomes one 128-bit load/store on the GPU.
struct alignas(16) KvWord16 {
  uint64_t lo, hi;
};
