// Writes a QuantizedCheckpoint in bitsandbytes' serialized layout (Linear4bit state dict) so that
// transformers + bitsandbytes and graft load it: for a projection P,
//   P.weight  u8 [(n+1)/2, 1] packed NF4 (high nibble first)
//   P.weight.absmax  u8 [blocks] (double quant) or f32 [blocks]
//   P.weight.quant_map  f32 [16]
//   P.weight.nested_absmax  f32 [ceil(blocks/256)], P.weight.nested_quant_map  f32 [256]  (double quant)
//   P.weight.quant_state.bitsandbytes__nf4  u8 = UTF-8 JSON {quant_type, blocksize, dtype, shape,
//                                              nested_blocksize, nested_dtype, nested_offset}
// config.json gains quantization_config (bitsandbytes, nf4, double quant, compute dtype).
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>

#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"

namespace graft::model {

namespace {
Tensor bytes_tensor(const void* p, size_t n, const Dims& shape) {
  Tensor t = Tensor::empty(shape, DType::U8);
  if (n) std::memcpy(t.raw(), p, n);
  return t;
}
Tensor f32_tensor(const float* p, size_t n) {
  Tensor t = Tensor::empty({static_cast<int64_t>(n)}, DType::F32);
  if (n) std::memcpy(t.raw(), p, n * 4);
  return t;
}
const char* torch_dtype_name(DType d) {
  return d == DType::F32 ? "float32" : d == DType::F16 ? "float16" : "bfloat16";
}
}  // namespace

void write_bnb_checkpoint(const QuantizedCheckpoint& qc, const std::string& src_dir, const std::string& out_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  GRAFT_CHECK_FIX(!ec && fs::is_directory(out_dir), "choose a writable output directory", "cannot create '{}': {}",
                  out_dir, ec.message());
  GRAFT_CHECK_FIX(fs::weakly_canonical(src_dir) != fs::weakly_canonical(out_dir), "write to a new directory",
                  "--out must differ from the source model directory '{}'", src_dir);
  io::NamedTensors out;
  for (const auto& [n, t] : qc.kept) out.emplace_back(n, t);
  for (const auto& [name, q] : qc.quantized) {
    const int64_t n = q->numel();
    out.emplace_back(name, bytes_tensor(q->packed.data(), q->packed.size(), Dims{(n + 1) / 2, 1}));
    const auto& code = nf4::code();
    out.emplace_back(name + ".quant_map", f32_tensor(code.data(), code.size()));
    nlohmann::ordered_json st = {{"quant_type", "nf4"}, {"blocksize", q->blocksize},
                                 {"dtype", torch_dtype_name(q->orig_dtype)},
                                 {"shape", std::vector<int64_t>(q->shape.begin(), q->shape.end())}};
    if (q->double_quant) {
      out.emplace_back(name + ".absmax", bytes_tensor(q->absmax_q.data(), q->absmax_q.size(),
                                                      Dims{static_cast<int64_t>(q->absmax_q.size())}));
      out.emplace_back(name + ".nested_absmax", f32_tensor(q->nested_absmax.data(), q->nested_absmax.size()));
      const auto& dm = nf4::dynamic_map_signed();
      out.emplace_back(name + ".nested_quant_map", f32_tensor(dm.data(), dm.size()));
      st["nested_blocksize"] = q->nested_blocksize;
      st["nested_dtype"] = "float32";
      st["nested_offset"] = q->nested_offset;
    } else {
      out.emplace_back(name + ".absmax", f32_tensor(q->absmax.data(), q->absmax.size()));
    }
    const std::string js = st.dump();
    out.emplace_back(name + ".quant_state.bitsandbytes__nf4",
                     bytes_tensor(js.data(), js.size(), Dims{static_cast<int64_t>(js.size())}));
  }
  io::save_safetensors((fs::path(out_dir) / "model.safetensors").string(), out, {{"format", "pt"}});
  // config.json with quantization_config; other small files copied as they are.
  auto cfg = nlohmann::ordered_json::parse(read_text_file((fs::path(src_dir) / "config.json").string()));
  cfg["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"load_in_8bit", false},
                                {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", !qc.quantized.empty() && qc.quantized.front().second->double_quant},
                                {"bnb_4bit_compute_dtype", "bfloat16"}, {"bnb_4bit_quant_storage", "uint8"},
                                {"llm_int8_skip_modules", nlohmann::ordered_json::array({"lm_head"})}};
  const std::string cs = cfg.dump(2) + "\n";
  write_file_atomic((fs::path(out_dir) / "config.json").string(), cs.data(), cs.size());
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path p = fs::path(src_dir) / f;
    if (!fs::exists(p)) continue;
    const std::string s = read_text_file(p.string());
    write_file_atomic((fs::path(out_dir) / f).string(), s.data(), s.size());
  }
}

}  // namespace graft::model
