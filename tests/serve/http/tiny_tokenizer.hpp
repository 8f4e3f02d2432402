// The tiny byte-level tokenizer and chat template (graft/model/presets.hpp) that the HTTP-layer
// tests format, parse and serve with: one process-wide instance each.
#pragma once

#include "graft/chat_template/chat_template.hpp"
#include "graft/model/presets.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::testing {

inline const tokenizer::Tokenizer& tiny_tok() {
  static auto t = tokenizer::Tokenizer::from_json(model::tiny_tokenizer_json().dump(), "tiny");
  return t;
}
inline const chat_template::ChatTemplate& tiny_chat() {
  static auto c = chat_template::ChatTemplate::from_tokenizer_config_json(model::tiny_tokenizer_config());
  return c;
}

}  // namespace graft::testing
