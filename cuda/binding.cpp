// binding.cpp: torch-facing entry of the kvbucket_cuda extension. Checks the tensors,
// fills a KvCopyArgs (kv_index.h) and launches kvb_copy_blocks (kvbucket_cuda.cu).
// No ATen CUDA headers (the caller, cuda/gather.py, picks the device and passes the stream
// as a raw handle) and not all of torch/extension.h: the few headers used halve compile time.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <vector>

#include "kv_index.h"

extern "C" cudaError_t kvb_copy_blocks(const KvCopyArgs* args, int32_t word_bytes, cudaStream_t stream);

namespace {

KvStrides describe(const at::Tensor& t, int64_t layout, KvDims* dims) {
  KvStrides s{};
  const int32_t status = kv_describe((int32_t)layout, (int32_t)t.dim(), t.sizes().data(), t.strides().data(), &s, dims);
  TORCH_CHECK(status == KV_OK, "kv cache of shape ", t.sizes(), " and strides ", t.strides(),
              " does not fit layout ", layout, " (kv_index.h status ", status, ")");
  return s;
}

void check_layers(const std::vector<at::Tensor>& layers) {
  TORCH_CHECK(!layers.empty(), "no kv cache layers");
  const at::Tensor& first = layers[0];
  TORCH_CHECK(first.is_cuda(), "kv caches must be CUDA tensors");
  for (const at::Tensor& t : layers) {
    TORCH_CHECK(t.device() == first.device() && t.scalar_type() == first.scalar_type() &&
                    t.sizes() == first.sizes() && t.strides() == first.strides(),
                "all kv cache layers must share device, dtype, shape and strides");
  }
}

// copy_blocks(layers, layer_ptrs, block_ids, chunk, layout, to_chunk, stream)
//   layer_ptrs: int64 [num_layers] on the caches' device, layers[i].data_ptr()
//   block_ids:  int64 [blocks] on the caches' device, each in [0, num_blocks) (not checked here)
//   chunk:      contiguous [num_layers, 2, blocks * block_size, num_heads, head_size], on the
//               device or in pinned / host-registered memory
void copy_blocks(const std::vector<at::Tensor>& layers, const at::Tensor& layer_ptrs, const at::Tensor& block_ids,
                 const at::Tensor& chunk, int64_t layout, bool to_chunk, int64_t stream) {
  check_layers(layers);
  const at::Tensor& first = layers[0];
  KvDims dims{};
  const KvStrides strides = describe(first, layout, &dims);
  const int64_t num_layers = (int64_t)layers.size();
  const int64_t elem_bytes = (int64_t)first.element_size();

  TORCH_CHECK(layer_ptrs.scalar_type() == at::kLong && layer_ptrs.device() == first.device() &&
                  layer_ptrs.is_contiguous() && layer_ptrs.numel() == num_layers,
              "layer_ptrs must be a contiguous int64 tensor of one pointer per layer on the caches' device");
  TORCH_CHECK(block_ids.scalar_type() == at::kLong && block_ids.device() == first.device() &&
                  block_ids.is_contiguous() && block_ids.dim() == 1,
              "block_ids must be a contiguous 1-D int64 tensor on the caches' device");
  const int64_t blocks = block_ids.numel();
  const std::vector<int64_t> want{num_layers, 2, blocks * dims.block_size, dims.num_heads, dims.head_size};
  TORCH_CHECK(chunk.scalar_type() == first.scalar_type() && chunk.is_contiguous() &&
                  chunk.sizes() == at::IntArrayRef(want),
              "chunk must be a contiguous ", first.scalar_type(), " tensor of shape ", at::IntArrayRef(want));

  KvCopyArgs args{};
  args.layer_ptrs = reinterpret_cast<char* const*>(layer_ptrs.data_ptr<int64_t>());
  args.chunk = static_cast<char*>(chunk.data_ptr());
  args.block_ids = block_ids.data_ptr<int64_t>();
  args.strides = strides;
  args.dims = dims;
  args.num_layers = num_layers;
  args.num_chunk_blocks = blocks;
  args.elem_bytes = elem_bytes;
  args.to_chunk = to_chunk ? 1 : 0;
  std::vector<const char*> host_ptrs;
  for (const at::Tensor& t : layers) host_ptrs.push_back(static_cast<const char*>(t.data_ptr()));
  const int32_t word = kv_pick_word(args, host_ptrs.data());
  const cudaError_t err = kvb_copy_blocks(&args, word, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "kvb_copy_blocks failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kvbucket GPU-direct KV block gather/scatter (see cuda/README.md)";
  m.def("copy_blocks", &copy_blocks, "Gather (to_chunk=True) or scatter KV blocks of all layers in one launch",
        py::arg("layers"), py::arg("layer_ptrs"), py::arg("block_ids"), py::arg("chunk"), py::arg("layout"),
        py::arg("to_chunk"), py::arg("stream"));
}
