// The second stage of every deterministic reduction: per-block partials (written by the passes in
// bn_act.cu, dwconv_bn_act.cu and gate_scale.cu, never with atomics) combined in block order, in
// double. One thread per output element walks the blocks sequentially: the result does not depend
// on scheduling.
#include "fb_cuda.cuh"

namespace fastblocks {
namespace cuda {
namespace {

// out[o * len + j] = sum_b part[(o * nb + b) * len + j].
__global__ void sum_partials_kernel(const double* __restrict__ part, int64_t outer, int64_t nb, int64_t len,
                                    double* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < outer * len;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = i / len, j = i % len;
    const double* p = part + o * nb * len + j;
    double s = 0.0;
    for (int64_t b = 0; b < nb; ++b) s += p[b * len];
    out[i] = s;
  }
}

// Chan et al.: mean = sum_b n_b mean_b / n, M2 = sum_b (M2_b + n_b (mean_b - mean)^2), var = M2 / n.
__global__ void merge_moments_kernel(const double* __restrict__ mean_b, const double* __restrict__ m2_b, int64_t nb,
                                     int64_t C, int64_t rows, int64_t rows_per_block, double* __restrict__ mean,
                                     double* __restrict__ var) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double n_b = static_cast<double>(min64(rows_per_block, rows - b * rows_per_block));
      s += mean_b[b * C + c] * n_b;
    }
    const double m = s / static_cast<double>(rows);
    double m2 = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double n_b = static_cast<double>(min64(rows_per_block, rows - b * rows_per_block));
      const double d = mean_b[b * C + c] - m;
      m2 += m2_b[b * C + c] + d * d * n_b;
    }
    mean[c] = m;
    var[c] = m2 / static_cast<double>(rows);
  }
}

}  // namespace

at::Tensor sum_partials(const at::Tensor& part) {
  TORCH_CHECK(part.dim() == 3 && part.scalar_type() == at::kDouble && part.is_contiguous(),
              "fastblocks_kernels: internal error, partials must be a contiguous double (outer, blocks, len) tensor");
  const int64_t outer = part.size(0), nb = part.size(1), len = part.size(2);
  at::Tensor out = at::empty({outer, len}, part.options());
  if (out.numel() == 0) return out;
  launch_kernel(sum_partials_kernel, grid_1d(outer * len), kThreads, 0, part.const_data_ptr<double>(), outer, nb,
                len, out.mutable_data_ptr<double>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_moments(const at::Tensor& mean_b, const at::Tensor& m2_b, int64_t rows,
                                                 int64_t rows_per_block) {
  TORCH_CHECK(mean_b.dim() == 2 && mean_b.sizes() == m2_b.sizes() && mean_b.scalar_type() == at::kDouble &&
                  m2_b.scalar_type() == at::kDouble && mean_b.is_contiguous() && m2_b.is_contiguous(),
              "fastblocks_kernels: internal error, moment partials must be contiguous double (blocks, C) tensors");
  const int64_t nb = mean_b.size(0), C = mean_b.size(1);
  at::Tensor mean = at::empty({C}, mean_b.options()), var = at::empty({C}, mean_b.options());
  if (C == 0) return {mean, var};
  launch_kernel(merge_moments_kernel, grid_1d(C), kThreads, 0, mean_b.const_data_ptr<double>(),
                m2_b.const_data_ptr<double>(), nb, C, rows, rows_per_block, mean.mutable_data_ptr<double>(),
                var.mutable_data_ptr<double>());
  return {mean, var};
}

}  // namespace cuda
}  // namespace fastblocks
