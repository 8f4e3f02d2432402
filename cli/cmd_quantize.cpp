// `graft quantize MODEL_DIR --out DIR [--no-double-quant]`: writes a bitsandbytes-layout NF4 checkpoint
// (every projection NF4; embeddings, norms, routers and lm_head kept as stored). Loading DIR with graft
// (or transformers + bitsandbytes) uses the pre-quantized weights as they are.
#include <cstdio>

#include "command.hpp"
#include "graft/model/model.hpp"

namespace {
graft::cli::Registration reg{"quantize", 20, [](CLI::App& app) {
  struct Args {
    std::string dir, out;
    bool no_dq = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("quantize", "Write an NF4 (bitsandbytes layout) copy of a model");
  sub->add_option("model_dir", a->dir, "Hugging Face model directory")->required();
  sub->add_option("--out", a->out, "Output directory")->required();
  sub->add_flag("--no-double-quant", a->no_dq, "Store absmax as fp32 instead of double-quantized u8");
  sub->callback([a] {
    auto qc = graft::model::quantize_checkpoint(a->dir, !a->no_dq);
    graft::model::write_bnb_checkpoint(qc, a->dir, a->out);
    size_t bytes = 0;
    for (auto& [n, q] : qc.quantized) bytes += q->bytes();
    std::printf("wrote %s: %zu projections quantized to NF4%s (%.2f MB), %zu tensors kept\n", a->out.c_str(),
                qc.quantized.size(), a->no_dq ? "" : " with double quantization", bytes / 1e6, qc.kept.size());
  });
}};
}  // namespace
