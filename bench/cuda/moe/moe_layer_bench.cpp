// MoE layer fwd + bwd timing on the GPU: route -> plan -> permute -> grouped NF4 gate_up (+SwiGLU)
// -> grouped NF4 down -> unpermute, and the backward (unpermute_bwd -> expert MLP bwd with dX
// through both NF4 GEMMs -> permute_bwd -> route_bwd), at the Qwen3-30B-A3B expert shape by
// default (E=128, top-8, H=2048, I=768, 8192 tokens). Prints one `RESULT` line per configuration
// (base only, and with rank-16 LoRA on gate_up and down). Effective FLOP counts only the base
// GEMMs: fwd 2·n·H·2I + 2·n·I·H = 6·n·H·I, bwd dX the same (n = tokens·top_k); LoRA and weight
// gradients are extra work not counted. Also captures fwd+bwd in a CUDA graph (checks that the
// path needs no host synchronisation) and times the replay.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "graft/cuda/device_info.hpp"
#include "moe_cuda_util.hpp"

using namespace graft;
using namespace graft::testing::moe;
namespace gm = graft::cuda::moe;

int main(int argc, char** argv) {
  int64_t T = 8192, H = 2048, I = 768;
  int E = 128, k = 8, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (a == "--tokens") T = v;
    else if (a == "--experts") E = static_cast<int>(v);
    else if (a == "--topk") k = static_cast<int>(v);
    else if (a == "--hidden") H = v;
    else if (a == "--inter") I = v;
    else if (a == "--iters") iters = static_cast<int>(v);
  }
  if (graft::cuda::device_count() == 0) {
    std::printf("no GPU: %s\n", graft::cuda::no_device_reason().c_str());
    return 0;
  }
  const auto dev = graft::cuda::device_info(0);
  std::printf("device %s (sm_%d%d, %d SMs)  T=%lld E=%d k=%d H=%lld I=%lld\n", dev.name.c_str(), dev.cc_major,
              dev.cc_minor, dev.sm_count, static_cast<long long>(T), E, k, static_cast<long long>(H),
              static_cast<long long>(I));
  const int64_t n = T * k;
  const int r = 16;
  std::printf("quantizing %d experts on the host...\n", E);
  auto Wgu = make_nf4_stack(E, 2 * I, H, true, 1, 0.02f, false), Wd = make_nf4_stack(E, H, I, true, 2, 0.02f, false);
  auto rb = [](size_t cnt, uint32_t seed, float sd) {
    auto v = randn(cnt, seed, sd);
    return to_bf16(v);
  };
  Dev<float> logits(randn(static_cast<size_t>(T * E), 3)), w(static_cast<size_t>(n)), dw(static_cast<size_t>(n)),
      dl(static_cast<size_t>(T * E));
  Dev<int32_t> ids(static_cast<size_t>(n));
  DevPlan dp(n, E);
  Dev<uint16_t> x(rb(static_cast<size_t>(T * H), 4, 1.f)), dout(rb(static_cast<size_t>(T * H), 5, 1.f)),
      Agu(rb(static_cast<size_t>(E * r * H), 6, 0.02f)), Bgu(rb(static_cast<size_t>(E * 2 * I * r), 7, 0.02f)),
      Ad(rb(static_cast<size_t>(E * r * I), 8, 0.02f)), Bd(rb(static_cast<size_t>(E * H * r), 9, 0.02f));
  Dev<uint16_t> xp(static_cast<size_t>(n * H)), gu(static_cast<size_t>(n * 2 * I)), h(static_cast<size_t>(n * I)),
      zgu(static_cast<size_t>(n * r)), zd(static_cast<size_t>(n * r)), yp(static_cast<size_t>(n * H)),
      out(static_cast<size_t>(T * H)), dyp(static_cast<size_t>(n * H)), dgu(static_cast<size_t>(n * 2 * I)),
      dz(static_cast<size_t>(n * r)), dxp(static_cast<size_t>(n * H)), dx(static_cast<size_t>(T * H));
  Dev<float> gagu(static_cast<size_t>(E * r * H)), gbgu(static_cast<size_t>(E * 2 * I * r)),
      gad(static_cast<size_t>(E * r * I)), gbd(static_cast<size_t>(E * H * r));
  cudaStream_t st;
  cuda_ok(cudaStreamCreate(&st), "stream");
  ops::RouterParams p;
  p.top_k = k;
  p.renormalize = true;

  for (int with_lora = 0; with_lora < 2; ++with_lora) {
    const int rank = with_lora ? r : 0;
    gm::ExpertMlpArgs m;
    m.E = E;
    m.n = n;
    m.H = H;
    m.I = I;
    m.offsets = dp.offsets.p;
    m.tile_offsets = dp.tile_offsets.p;
    m.w_gu = Wgu.view();
    m.w_down = Wd.view();
    m.lora_gu = {Agu.p, Bgu.p, rank, 2.0f};
    m.lora_down = {Ad.p, Bd.p, rank, 2.0f};
    const gm::ExpertMlpSaved saved{gu.p, h.p, zgu.p, zd.p};
    auto fwd = [&] {
      gm::RouteArgs ra;
      ra.logits = logits.p;
      ra.T = T;
      ra.E = E;
      ra.params = p;
      ra.ids = ids.p;
      ra.weights = w.p;
      gm::route(ra, st);
      gm::build_plan(ids.p, n, E, dp.plan(), dp.ws.p, st);
      gm::permute({x.p, T, H, k, dp.order.p, nullptr, xp.p}, st);
      gm::expert_mlp_fwd(m, xp.p, saved, yp.p, st);
      gm::unpermute({yp.p, T, H, k, dp.pos.p, w.p, out.p}, st);
    };
    auto bwd = [&] {
      gm::unpermute_bwd({yp.p, dout.p, T, H, k, dp.pos.p, w.p, dyp.p, dw.p}, st);
      gm::expert_mlp_bwd(m, xp.p, saved, dyp.p, {dgu.p, dz.p}, {gagu.p, gbgu.p, gad.p, gbd.p}, dxp.p, st);
      gm::permute_bwd({x.p, dxp.p, T, H, k, dp.pos.p, nullptr, dx.p, nullptr}, st);
      gm::RouteBwdArgs rbw;
      rbw.logits = logits.p;
      rbw.T = T;
      rbw.E = E;
      rbw.params = p;
      rbw.ids = ids.p;
      rbw.dweights = dw.p;
      rbw.dlogits = dl.p;
      gm::route_bwd(rbw, st);
    };
    cudaEvent_t e0, e1, e2;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventCreate(&e2);
    for (int i = 0; i < 3; ++i) {
      fwd();
      bwd();
    }
    cuda_ok(cudaStreamSynchronize(st), "warmup");
    float fwd_ms = 0, bwd_ms = 0;
    for (int i = 0; i < iters; ++i) {
      cudaEventRecord(e0, st);
      fwd();
      cudaEventRecord(e1, st);
      bwd();
      cudaEventRecord(e2, st);
      cuda_ok(cudaEventSynchronize(e2), "timing");
      float a = 0, b = 0;
      cudaEventElapsedTime(&a, e0, e1);
      cudaEventElapsedTime(&b, e1, e2);
      fwd_ms += a;
      bwd_ms += b;
    }
    fwd_ms /= static_cast<float>(iters);
    bwd_ms /= static_cast<float>(iters);
    // CUDA graph: capture fwd + bwd once, replay
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    float graph_ms = -1;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal) == cudaSuccess) {
      fwd();
      bwd();
      if (cudaStreamEndCapture(st, &graph) == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
        cudaGraphLaunch(exec, st);
        cudaStreamSynchronize(st);
        cudaEventRecord(e0, st);
        for (int i = 0; i < iters; ++i) cudaGraphLaunch(exec, st);
        cudaEventRecord(e1, st);
        cuda_ok(cudaEventSynchronize(e1), "graph");
        cudaEventElapsedTime(&graph_ms, e0, e1);
        graph_ms /= static_cast<float>(iters);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      }
    }
    cuda_ok(cudaGetLastError(), "after graph");
    const double flop_fwd = 6.0 * static_cast<double>(n) * static_cast<double>(H) * static_cast<double>(I);
    const double tot = fwd_ms + bwd_ms;
    std::printf("RESULT impl=graft_nf4 lora=%d fwd_ms=%.3f bwd_ms=%.3f total_ms=%.3f graph_total_ms=%.3f "
                "fwd_tflops=%.1f bwd_tflops=%.1f total_tflops=%.1f\n",
                rank, fwd_ms, bwd_ms, tot, graph_ms, flop_fwd / (fwd_ms * 1e9), flop_fwd / (bwd_ms * 1e9),
                2 * flop_fwd / (tot * 1e9));
  }
  cudaStreamDestroy(st);
  return 0;
}
