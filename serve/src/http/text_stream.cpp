// Incremental choice text with stop-string holdback. See text_stream.hpp.
#include "text_stream.hpp"

#include <algorithm>
#include <utility>

namespace graft::serve::http {

size_t stop_prefix_holdback(std::string_view text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const auto& s : stops) {
    const size_t max_len = std::min(text.size(), s.size() - 1);  // proper prefix only
    for (size_t len = max_len; len > best; --len) {
      if (text.substr(text.size() - len) == std::string_view(s).substr(0, len)) {
        best = len;
        break;
      }
    }
  }
  return best;
}

StopStringFilter::StopStringFilter(std::vector<std::string> stops, bool include_stop)
    : stops_(std::move(stops)), include_stop_(include_stop) {
  stops_.erase(std::remove_if(stops_.begin(), stops_.end(), [](const std::string& s) { return s.empty(); }), stops_.end());
}

std::string StopStringFilter::push(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);
  if (stops_.empty()) return std::exchange(pending_, {});
  // Earliest stop string in the pending text (a match cannot start in already emitted text, since
  // every possible start of a match was held back).
  size_t at = std::string::npos, len = 0;
  for (const auto& s : stops_) {
    const size_t p = pending_.find(s);
    if (p != std::string::npos && (p < at || (p == at && s.size() > len))) at = p, len = s.size();
  }
  if (at != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, include_stop_ ? at + len : at);
    pending_.clear();
    return out;
  }
  const size_t hold = stop_prefix_holdback(pending_, stops_);
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringFilter::finish() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

ChoiceText::ChoiceText(const tokenizer::Tokenizer& tok, bool skip_special, std::vector<std::string> stops,
                       bool include_stop)
    : dec_(tok, skip_special), filter_(std::move(stops), include_stop) {}

std::string ChoiceText::on_token(int32_t id) {
  if (filter_.stopped()) return {};
  return filter_.push(dec_.step(id));
}

std::string ChoiceText::finish() {
  if (filter_.stopped()) return {};
  std::string out = filter_.push(dec_.flush());
  if (filter_.stopped()) return out;
  return out + filter_.finish();
}

}  // namespace graft::serve::http
