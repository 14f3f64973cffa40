// host_harness.cpp: runs kv_index.h on the CPU the way kvbucket_cuda.cu runs it on a GPU
// (every group, every item), behind a C ABI for ctypes. Lets the tests execute the
// header's index math on a machine without a GPU and compare it with cuda/kv_index.py.
#include <stdint.h>

#include "kv_index.h"

namespace {

template <typename Word>
void run(const KvCopyArgs& a) {
  const int64_t words = kv_words_per_group(a, (int32_t)sizeof(Word));
  for (int64_t group = 0; group < kv_num_groups(a); ++group) {  // blockIdx.x
    const KvGroup g = kv_group(a, group);
    for (int64_t item = 0; item < words; ++item) kv_copy_item<Word>(a, g, (uint32_t)item);  // threadIdx.x loop
  }
}

}  // namespace

// out: strides (kv, block, token, head) then dims (num_blocks, block_size, num_heads, head_size).
extern "C" int32_t kvh_describe(int32_t layout, int32_t ndim, const int64_t* shape, const int64_t* stride,
                                int64_t* out) {
  KvStrides s{};
  KvDims d{};
  const int32_t status = kv_describe(layout, ndim, shape, stride, &s, &d);
  const int64_t values[8] = {s.kv, s.block, s.token, s.head, d.num_blocks, d.block_size, d.num_heads, d.head_size};
  for (int i = 0; i < 8; ++i) out[i] = values[i];
  return status;
}

// Gather (to_chunk=1) or scatter with copy word `word` (0: kv_pick_word's choice, written to
// *word_used). Returns a KvStatus, or -1 for a word that does not fit the data.
extern "C" int32_t kvh_copy(int32_t layout, int32_t ndim, const int64_t* shape, const int64_t* stride,
                            int64_t elem_bytes, int64_t num_layers, char* const* layer_ptrs, char* chunk,
                            const int64_t* block_ids, int64_t num_chunk_blocks, int32_t to_chunk, int32_t word,
                            int32_t* word_used) {
  KvCopyArgs a{};
  const int32_t status = kv_describe(layout, ndim, shape, stride, &a.strides, &a.dims);
  if (status != KV_OK) return status;
  a.layer_ptrs = layer_ptrs;
  a.chunk = chunk;
  a.block_ids = block_ids;
  a.num_layers = num_layers;
  a.num_chunk_blocks = num_chunk_blocks;
  a.elem_bytes = elem_bytes;
  a.to_chunk = to_chunk;
  const int32_t best = kv_pick_word(a, layer_ptrs);
  if (word == 0) word = best;
  if (word > best || best % word != 0) return -1;
  *word_used = word;
  switch (word) {
    case 16: run<KvWord16>(a); break;
    case 8: run<uint64_t>(a); break;
    case 4: run<uint32_t>(a); break;
    case 2: run<uint16_t>(a); break;
    case 1: run<uint8_t>(a); break;
    default: return -1;
  }
  return KV_OK;
}
