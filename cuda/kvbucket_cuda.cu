// kvbucket_cuda.cu: gather KV blocks of many layers into one chunk buffer, or scatter them
// back, in one launch on a given stream. Plain CUDA (no torch headers), so it compiles and
// is tested with nvcc alone; binding.cpp turns tensors into a KvCopyArgs and calls
// kvb_copy_blocks. All index math is in kv_index.h.
#include <cuda_runtime.h>

#include "kv_index.h"

namespace {

constexpr int kMaxThreads = 256;

template <typename Word>
__global__ void __launch_bounds__(kMaxThreads) kv_copy_kernel(const KvCopyArgs a, uint32_t words_per_group) {
  const KvGroup g = kv_group(a, blockIdx.x);
  for (uint32_t item = threadIdx.x; item < words_per_group; item += blockDim.x) {
    kv_copy_item<Word>(a, g, item);
  }
}

template <typename Word>
cudaError_t launch(const KvCopyArgs& a, cudaStream_t stream) {
  const int64_t groups = kv_num_groups(a);
  const int64_t words = kv_words_per_group(a, (int32_t)sizeof(Word));
  if (groups == 0 || words == 0) return cudaSuccess;
  if (groups > 0x7fffffff || words > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const int threads = words < kMaxThreads ? (int)(((words + 31) / 32) * 32) : kMaxThreads;
  kv_copy_kernel<Word><<<(unsigned)groups, threads, 0, stream>>>(a, (uint32_t)words);
  return cudaGetLastError();
}

}  // namespace

// word_bytes: from kv_word_bytes() over row bytes, strides and addresses (1, 2, 4, 8 or 16).
extern "C" cudaError_t kvb_copy_blocks(const KvCopyArgs* args, int32_t word_bytes, cudaStream_t stream) {
  switch (word_bytes) {
    case 16: return launch<KvWord16>(*args, stream);
    case 8: return launch<uint64_t>(*args, stream);
    case 4: return launch<uint32_t>(*args, stream);
    case 2: return launch<uint16_t>(*args, stream);
    case 1: return launch<uint8_t>(*args, stream);
    default: return cudaErrorInvalidValue;
  }
}
