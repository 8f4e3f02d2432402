// Dataset type from the records' fields (graft eval without --type, the fine-tuning API's uploads).
#include "data_internal.hpp"
#include "graft/error.hpp"

namespace graft::train {

std::string detect_record_type(const nlohmann::ordered_json& record) {
  if (!record.is_object()) return {};
  if (record.contains("messages")) return "chat_template";
  if (record.contains("conversations")) return "sharegpt";
  if (record.contains("instruction")) return "alpaca";
  if (record.contains("input_ids")) return "pretokenized";
  if (record.contains("text")) return "completion";
  return {};
}

std::string detect_dataset_type(const std::string& path) {
  auto records = data_detail::read_records(path);
  GRAFT_CHECK_FIX(!records.empty(), "add at least one record", "{}: no records to detect the format from", path);
  std::string type;
  const data_detail::Record* first = nullptr;
  for (const auto& r : records) {
    std::string t = detect_record_type(r.value);
    GRAFT_CHECK_FIX(!t.empty(), "give each record messages, conversations, instruction/output, input_ids or text, or pass --type",
                    "{}: has none of the fields graft reads (messages, conversations, instruction, input_ids, text)",
                    data_detail::where(path, r));
    if (!first) {
      type = t, first = &r;
      continue;
    }
    GRAFT_CHECK_FIX(t == type, "keep one format per file (split it), or pass --type to force one",
                    "{}: looks like {} but {} looks like {}", data_detail::where(path, r), t,
                    data_detail::where(path, *first), type);
  }
  return type;
}

}  // namespace graft::train
