// Writes a small seed corpus of valid safetensors files for fuzz_safetensors_header.
#include <cstdio>
#include <filesystem>
#include <string>

#include "graft/io/safetensors.hpp"

using namespace graft;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds OUT_DIR\n");
    return 2;
  }
  std::filesystem::create_directories(argv[1]);
  auto out = [&](const std::string& n) { return (std::filesystem::path(argv[1]) / n).string(); };
  io::save_safetensors(out("empty.safetensors"), {});
  io::save_safetensors(out("meta.safetensors"), {}, {{"format", "pt"}, {"note", "seed"}});
  Tensor a = Tensor::zeros({2, 3}, DType::F32);
  Tensor b = Tensor::zeros({5}, DType::BF16);
  Tensor c = Tensor::zeros({}, DType::I64);
  Tensor e = Tensor::zeros({0, 4}, DType::F16);
  Tensor f = Tensor::zeros({3, 1, 2}, DType::F8E4M3);
  Tensor g = Tensor::zeros({4}, DType::Bool);
  io::save_safetensors(out("one.safetensors"), {{"w", a}});
  io::save_safetensors(out("mixed.safetensors"),
                       {{"model.layers.0.self_attn.q_proj.weight", a}, {"norm", b}, {"step", c}, {"empty", e},
                        {"fp8", f}, {"mask", g}},
                       {{"format", "pt"}});
  io::save_safetensors(out("given.safetensors"), {{"z", b}, {"a", a}}, {}, io::WriteOrder::Given);
  io::NamedTensors layers;
  for (int l = 0; l < 2; ++l)
    for (const char* n : {"input_layernorm.weight", "self_attn.q_proj.weight", "mlp.experts.0.down_proj.weight"})
      layers.emplace_back("model.layers." + std::to_string(l) + "." + n, Tensor::zeros({2, 2}, DType::BF16));
  io::save_safetensors(out("layers.safetensors"), layers, {{"format", "pt"}}, io::WriteOrder::ByName);
  return 0;
}
