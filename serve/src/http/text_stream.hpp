// Incremental text of one generated choice: token ids -> UTF-8 text (StreamDecoder) -> stop strings.
//
// StopStringFilter never emits any part of a stop string: text that could still turn out to be the
// start of a stop string (the longest suffix of the pending text that is a proper prefix of a stop
// string) is held back until the next piece decides it. When a stop string appears, the text before
// it is released (plus the stop string itself with include_stop), and everything after is dropped.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "graft/tokenizer/tokenizer.hpp"

namespace graft::serve::http {

class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops, bool include_stop = false);
  // Adds text; returns the part that can be emitted now (possibly empty). Ignored once stopped().
  std::string push(std::string_view text);
  // End of generation: releases the held-back text (no stop string completed).
  std::string finish();
  bool stopped() const { return stopped_; }
  size_t held() const { return pending_.size(); }

 private:
  std::vector<std::string> stops_;
  bool include_stop_;
  bool stopped_ = false;
  std::string pending_;
};

// Length of the longest suffix of `text` that is a proper prefix of one of `stops`.
size_t stop_prefix_holdback(std::string_view text, const std::vector<std::string>& stops);

// One choice's text: StreamDecoder + StopStringFilter.
class ChoiceText {
 public:
  ChoiceText(const tokenizer::Tokenizer& tok, bool skip_special, std::vector<std::string> stops, bool include_stop);
  // Text emitted because of this token (possibly empty). After a stop string, stopped() is true.
  std::string on_token(int32_t id);
  // End of generation: the decoder's and the filter's held-back text.
  std::string finish();
  bool stopped() const { return filter_.stopped(); }

 private:
  tokenizer::StreamDecoder dec_;
  StopStringFilter filter_;
};

}  // namespace graft::serve::http
