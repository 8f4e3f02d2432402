// FileStore: training files uploaded through POST /v1/files (purpose "fine-tune"), kept on disk under
// DIR/files/ (FILE_ID.jsonl + FILE_ID.json metadata, both written atomically) so they survive a
// restart. Every file is validated on upload by the trainer's own data pipeline (the same parser
// `graft train` uses, with the server's tokenizer and chat template): a bad line gives ApiError 400
// naming the line and field, and nothing is stored.
//
// Ownership: each file records the sha256 of the API key that uploaded it ("" without keys); a key
// sees and uses only its own files (others get 404, as if the file did not exist).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace graft::finetune {

struct FileInfo {
  std::string id, filename, purpose, owner, format;  // format: the dataset type the trainer reads it as
  int64_t bytes = 0, created_at = 0, records = 0;
  nlohmann::json to_openai() const;  // {"id", "object": "file", "bytes", "created_at", "filename", "purpose"}
};

class FileStore {
 public:
  // Validates a file's content (path to a temporary copy, the dataset type); throws graft::Error on
  // malformed data, returns the number of records.
  using Validator = std::function<int64_t(const std::string& path, const std::string& type)>;
  FileStore(std::string dir, Validator validate);

  // Stores an upload. ApiError 400: empty/oversize content, purpose other than "fine-tune", unknown
  // format, or the validator's message (with the upload's filename in place of the temporary path).
  FileInfo add(const std::string& owner, const std::string& filename, const std::string& purpose,
               const std::string& content);
  std::vector<FileInfo> list(const std::string& owner) const;
  FileInfo get(const std::string& owner, const std::string& id) const;  // ApiError 404
  std::string content_path(const FileInfo& f) const;
  void remove(const std::string& owner, const std::string& id);         // ApiError 404
  size_t max_bytes = size_t(256) << 20;

 private:
  std::string dir_;
  Validator validate_;
  mutable std::mutex mu_;
  std::vector<FileInfo> files_;
};

// The dataset type of a JSONL file from its first record: "messages" -> chat_template,
// "conversations" -> sharegpt, "instruction" -> alpaca, "text" -> completion, "input_ids" ->
// pretokenized. ApiError 400 naming line 1 otherwise.
std::string detect_format(const std::string& content);

}  // namespace graft::finetune
