// kernels/cuda/conv2d_cuda.cpp: 2-D convolution on cuDNN, NHWC (kernels/conv2d.h; the math
// is kernels/conv2d.h's): forward, backward-data and backward-filter.
//
// Layout. x (B,H,W,Cin) and y (B,Ho,Wo,Cout) are cuDNN's NHWC tensors and w (Cout,KH,KW,Cin) is its
// NHWC ("KRSC") filter, so nothing is transposed: the layout that tensor cores and the fast cuDNN
// kernels want is the one the whole engine uses. bf16 tensors compute in f32
// (PSEUDO_BFLOAT16_CONFIG) on tensor cores; f32 tensors use FMA math only (no TF32), so they match
// the cpu's f32 results to f32 rounding.
//
// Algorithms. Per shape (and dtype, device), the first call of each direction times cuDNN's
// candidates once (cudnnFind*AlgorithmEx, on the call's own buffers and a workspace of up to
// kFindWorkspace bytes from the caching allocator) and keeps the fastest deterministic one, so a
// training step gives the same bits on every run and a replayed CUDA graph the same as an eager
// step. Finding waits for the GPU; it happens in the first iteration, never in the steady state.
// Inside a graph capture, where it may not wait, an unknown shape takes cuDNN's heuristic choice.
// The bias is added by the broadcast kernel in place after the convolution.
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/conv2d.h"

#if defined(DIFFUSE_HAVE_CUDNN)
#include <cuda_runtime.h>
#include <cudnn.h>

#include "core/cuda_check.h"
#include "kernels/elementwise.h"
#endif

namespace diffuse::cuda {

using kernels::BinaryOp;
using kernels::Conv2dGrads;
using kernels::Conv2dParams;
using kernels::conv2d_output_shape;
using kernels::Dims;

namespace {

struct ConvGeom {
  int64_t B, H, W, Cin, Cout, KH, KW, Ho, Wo;
};

ConvGeom conv_geometry(const Tensor& x, const Tensor& w, const Conv2dParams& p, const char* what) {
  DF_CHECK(x.defined() && w.defined() && x.device().is_cuda() && w.device() == x.device(), what, ": ", x.str(), ", ",
           w.str());
  DF_CHECK(x.dtype() == w.dtype() && (x.dtype() == DType::f32 || x.dtype() == DType::bf16), what, ": x ", x.str(),
           ", weight ", w.str(), " (f32 or bf16, the same)");
  DF_CHECK(x.dim() == 4 && w.dim() == 4 && x.size(3) == w.size(3), what, ": x ", x.shape().str(), " (B,H,W,Cin) and w ",
           w.shape().str(), " (Cout,KH,KW,Cin) do not fit");
  const Shape y = conv2d_output_shape(x.shape(), w.shape(), p);
  return {x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(1), w.size(2), y[1], y[2]};
}

}  // namespace

#if defined(DIFFUSE_HAVE_CUDNN)

namespace {

constexpr size_t kFindWorkspace = size_t{256} << 20;
constexpr int kMaxDevices = 16;

cudnnHandle_t cudnn_handle(int device) {
  static std::mutex mu;
  static cudnnHandle_t handles[kMaxDevices] = {};
  DF_CHECK(device >= 0 && device < kMaxDevices, "cuDNN: device ", device);
  std::lock_guard<std::mutex> lock(mu);
  if (!handles[device]) DF_CUDNN_CHECK(cudnnCreate(&handles[device]));
  return handles[device];
}

using ConvKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int>;

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  bool have_fwd = false, have_data = false, have_filter = false;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t data{};
  cudnnConvolutionBwdFilterAlgo_t filter{};
  size_t fwd_ws = 0, data_ws = 0, filter_ws = 0;
};

std::mutex g_conv_mu;  // plans, and the handle's stream between cudnnSetStream and the call
std::map<ConvKey, ConvPlan>& conv_plans() {
  static auto* m = new std::map<ConvKey, ConvPlan>;
  return *m;
}

ConvPlan& plan_for(const ConvGeom& g, const Conv2dParams& p, DType t, int device) {
  const ConvKey key{device, static_cast<int>(t), g.B, g.H, g.W, g.Cin, g.Cout, g.KH, g.KW, p.stride, p.padding};
  auto it = conv_plans().find(key);
  if (it != conv_plans().end()) return it->second;
  const cudnnDataType_t dt = t == DType::f32 ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
  ConvPlan c;
  DF_CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.x));
  DF_CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.y));
  DF_CUDNN_CHECK(cudnnCreateFilterDescriptor(&c.w));
  DF_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c.conv));
  auto i32 = [](int64_t v) {
    DF_CHECK(v <= 0x7fffffff, "conv2d: size ", v, " over cuDNN's int");
    return static_cast<int>(v);
  };
  DF_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.x, CUDNN_TENSOR_NHWC, dt, i32(g.B), i32(g.Cin), i32(g.H), i32(g.W)));
  DF_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.y, CUDNN_TENSOR_NHWC, dt, i32(g.B), i32(g.Cout), i32(g.Ho), i32(g.Wo)));
  DF_CUDNN_CHECK(cudnnSetFilter4dDescriptor(c.w, dt, CUDNN_TENSOR_NHWC, i32(g.Cout), i32(g.Cin), i32(g.KH), i32(g.KW)));
  DF_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c.conv, p.padding, p.padding, p.stride, p.stride, 1, 1,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  DF_CUDNN_CHECK(cudnnSetConvolutionMathType(c.conv, t == DType::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  return conv_plans().emplace(key, c).first->second;
}

bool capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  DF_CUDA_CHECK(cudaStreamIsCapturing(s, &st));
  return st != cudaStreamCaptureStatusNone;
}

// The fastest deterministic result that ran, else the fastest that ran.
template <class Perf>
const Perf* pick(const Perf* perf, int n) {
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) return &perf[i];
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) return &perf[i];
  return nullptr;
}

Tensor scratch(size_t bytes, Device d) {
  return bytes ? Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, d) : Tensor();
}
void* ptr_of(Tensor& t) { return t.defined() ? t.raw() : nullptr; }

}  // namespace

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  const ConvGeom g = conv_geometry(x, w, p, "conv2d");
  if (bias.defined())
    DF_CHECK(bias.dtype() == x.dtype() && bias.device() == x.device() && bias.shape() == Shape({g.Cout}),
             "conv2d: bias ", bias.str(), " for ", g.Cout, " output channels of ", x.str());
  set_current_device(x.device());
  const int device = x.device().index;
  Tensor y = Tensor::empty({g.B, g.Ho, g.Wo, g.Cout}, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  cudaStream_t s = static_cast<cudaStream_t>(current_stream());
  cudnnHandle_t h = cudnn_handle(device);
  const float one = 1.f, zero = 0.f;
  {
    std::lock_guard<std::mutex> lock(g_conv_mu);
    ConvPlan& c = plan_for(g, p, x.dtype(), device);
    DF_CUDNN_CHECK(cudnnSetStream(h, s));
    if (!c.have_fwd) {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      int n = 0;
      if (capturing(s)) {
        DF_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, c.x, c.w, c.conv, c.y,
                                                              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
      } else {
        Tensor ws = scratch(kFindWorkspace, x.device());
        DF_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, c.x, x.raw(), c.w, w.raw(), c.conv, c.y, y.raw(),
                                                              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf, ws.raw(),
                                                              kFindWorkspace));
      }
      const cudnnConvolutionFwdAlgoPerf_t* best = pick(perf, n);
      DF_CHECK(best, "cuDNN has no forward algorithm for conv2d x ", x.str(), ", w ", w.str());
      c.fwd = best->algo;
      c.fwd_ws = best->memory;
      c.have_fwd = true;
    }
    Tensor ws = scratch(c.fwd_ws, x.device());
    DF_CUDNN_CHECK(cudnnConvolutionForward(h, &one, c.x, x.raw(), c.w, w.raw(), c.conv, c.fwd, ptr_of(ws), c.fwd_ws,
                                           &zero, c.y, y.raw()));
  }
  if (bias.defined()) {
    const Dims yd{g.B, g.Ho, g.Wo, g.Cout}, bd{g.Cout};
    cuda::binary_forward(BinaryOp::add, y.raw(), yd, bias.raw(), bd, y.raw(), y.dtype(), s);
  }
  return y;
}

Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                            bool need_w, bool need_b) {
  const ConvGeom g = conv_geometry(x, w, p, "conv2d backward");
  DF_CHECK(gy.dtype() == x.dtype() && gy.device() == x.device() && gy.shape() == Shape({g.B, g.Ho, g.Wo, g.Cout}),
           "conv2d backward: gradient ", gy.str(), " for x ", x.str(), ", w ", w.str());
  set_current_device(x.device());
  const int device = x.device().index;
  cudaStream_t s = static_cast<cudaStream_t>(current_stream());
  cudnnHandle_t h = cudnn_handle(device);
  const float one = 1.f, zero = 0.f;
  Conv2dGrads r;
  if (need_x) r.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (need_w) r.dw = Tensor::empty(w.shape(), w.dtype(), w.device());
  if ((need_x || need_w) && gy.numel() > 0) {
    std::lock_guard<std::mutex> lock(g_conv_mu);
    ConvPlan& c = plan_for(g, p, x.dtype(), device);
    DF_CUDNN_CHECK(cudnnSetStream(h, s));
    const bool cap = capturing(s);
    if (need_x) {
      if (!c.have_data) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        int n = 0;
        if (cap) {
          DF_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, c.w, c.y, c.conv, c.x,
                                                                     CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf));
        } else {
          Tensor ws = scratch(kFindWorkspace, x.device());
          DF_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, c.w, w.raw(), c.y, gy.raw(), c.conv, c.x,
                                                                     r.dx.raw(), CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                                     &n, perf, ws.raw(), kFindWorkspace));
        }
        const cudnnConvolutionBwdDataAlgoPerf_t* best = pick(perf, n);
        DF_CHECK(best, "cuDNN has no backward-data algorithm for conv2d x ", x.str(), ", w ", w.str());
        c.data = best->algo;
        c.data_ws = best->memory;
        c.have_data = true;
      }
      Tensor ws = scratch(c.data_ws, x.device());
      DF_CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, c.w, w.raw(), c.y, gy.raw(), c.conv, c.data, ptr_of(ws),
                                                  c.data_ws, &zero, c.x, r.dx.raw()));
    }
    if (need_w) {
      if (!c.have_filter) {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        int n = 0;
        if (cap) {
          DF_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
              h, c.x, c.y, c.conv, c.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf));
        } else {
          Tensor ws = scratch(kFindWorkspace, x.device());
          DF_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
              h, c.x, x.raw(), c.y, gy.raw(), c.conv, c.w, r.dw.raw(), CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n,
              perf, ws.raw(), kFindWorkspace));
        }
        const cudnnConvolutionBwdFilterAlgoPerf_t* best = pick(perf, n);
        DF_CHECK(best, "cuDNN has no backward-filter algorithm for conv2d x ", x.str(), ", w ", w.str());
        c.filter = best->algo;
        c.filter_ws = best->memory;
        c.have_filter = true;
      }
      Tensor ws = scratch(c.filter_ws, x.device());
      DF_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, c.x, x.raw(), c.y, gy.raw(), c.conv, c.filter,
                                                    ptr_of(ws), c.filter_ws, &zero, c.w, r.dw.raw()));
    }
  } else {
    if (need_x) r.dx.zero_();
    if (need_w) r.dw.zero_();
  }
  if (need_b) r.db = sum(gy, {0, 1, 2}, false);
  return r;
}

#else  // a CUDA build without cuDNN

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor&, const Conv2dParams& p) {
  conv_geometry(x, w, p, "conv2d");
  DF_FAIL("conv2d on ", x.device().str(), " needs cuDNN, which this build did not find (libcudnn)");
}

Conv2dGrads conv2d_backward(const Tensor&, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool, bool, bool) {
  conv_geometry(x, w, p, "conv2d backward");
  DF_FAIL("conv2d on ", x.device().str(), " needs cuDNN, which this build did not find (libcudnn)");
}

#endif

}  // namespace diffuse::cuda
