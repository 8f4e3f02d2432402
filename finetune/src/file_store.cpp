#include "graft/finetune/file_store.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/train/data.hpp"

namespace graft::finetune {
namespace fs = std::filesystem;
using serve::ApiError;
using serve::bad_request;

nlohmann::json FileInfo::to_openai() const {
  return {{"id", id}, {"object", "file"}, {"bytes", bytes}, {"created_at", created_at}, {"filename", filename},
          {"purpose", purpose}, {"status", "processed"}};
}

namespace {
nlohmann::json to_json(const FileInfo& f) {
  return {{"id", f.id}, {"filename", f.filename}, {"purpose", f.purpose}, {"owner", f.owner}, {"format", f.format},
          {"bytes", f.bytes}, {"created_at", f.created_at}, {"records", f.records}};
}
FileInfo from_json(const nlohmann::json& j) {
  FileInfo f;
  f.id = j.at("id").get<std::string>();
  f.filename = j.at("filename").get<std::string>();
  f.purpose = j.at("purpose").get<std::string>();
  f.owner = j.at("owner").get<std::string>();
  f.format = j.at("format").get<std::string>();
  f.bytes = j.at("bytes").get<int64_t>();
  f.created_at = j.at("created_at").get<int64_t>();
  f.records = j.at("records").get<int64_t>();
  return f;
}
std::string random_id(const std::string& prefix) {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> g(mu);
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[rng() % 16];
  return s;
}
void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
}
}  // namespace

std::string detect_format(const std::string& content) {
  const size_t end = content.find('\n');
  const std::string first = content.substr(0, end);
  auto j = nlohmann::ordered_json::parse(first, nullptr, false);
  if (!j.is_object())
    throw bad_request("line 1 is not a JSON object: upload JSONL, one training example per line", "file", "invalid_file");
  if (std::string t = train::detect_record_type(j); !t.empty()) return t;
  throw bad_request("line 1 has none of the fields the trainer reads (messages, conversations, instruction, text, "
                    "input_ids)", "file", "invalid_file");
}

FileStore::FileStore(std::string dir, Validator validate) : dir_(std::move(dir)), validate_(std::move(validate)) {
  fs::create_directories(fs::path(dir_) / "files");
  for (const auto& e : fs::directory_iterator(fs::path(dir_) / "files")) {
    if (e.path().extension() != ".json") continue;
    auto j = nlohmann::json::parse(read_text_file(e.path().string()), nullptr, false);
    try {
      FileInfo f = from_json(j);
      if (fs::exists(content_path(f))) files_.push_back(f);
    } catch (const std::exception&) {
      // A metadata file we cannot read is skipped (it was not written by us or is damaged).
    }
  }
  std::sort(files_.begin(), files_.end(), [](const FileInfo& a, const FileInfo& b) {
    return a.created_at < b.created_at || (a.created_at == b.created_at && a.id < b.id);
  });
}

std::string FileStore::content_path(const FileInfo& f) const { return (fs::path(dir_) / "files" / (f.id + ".jsonl")).string(); }

FileInfo FileStore::add(const std::string& owner, const std::string& filename, const std::string& purpose,
                        const std::string& content) {
  if (purpose != "fine-tune")
    throw bad_request("purpose must be \"fine-tune\" (got \"" + purpose + "\")", "purpose", "invalid_purpose");
  if (content.empty()) throw bad_request("the uploaded file is empty", "file", "invalid_file");
  if (content.size() > max_bytes)
    throw ApiError(413, "invalid_request_error",
                   "the file has " + std::to_string(content.size()) + " bytes; the limit is " + std::to_string(max_bytes),
                   "file", "file_too_large");
  FileInfo f;
  f.id = random_id("file-");
  f.filename = filename.empty() ? "upload.jsonl" : filename;
  f.purpose = purpose;
  f.owner = owner;
  f.format = detect_format(content);
  f.bytes = static_cast<int64_t>(content.size());
  f.created_at = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string tmp = (fs::path(dir_) / "files" / (f.id + ".upload.jsonl")).string();
  write_file_atomic(tmp, content.data(), content.size());
  try {
    f.records = validate_(tmp, f.format);
  } catch (const Error& e) {
    fs::remove(tmp);
    std::string msg = e.message();
    replace_all(msg, tmp, f.filename);
    if (!e.fix().empty()) msg += " (" + e.fix() + ")";
    throw bad_request("invalid training file " + f.filename + ": " + msg, "file", "invalid_file");
  }
  fs::rename(tmp, content_path(f));
  const std::string meta = to_json(f).dump(2);
  write_file_atomic((fs::path(dir_) / "files" / (f.id + ".json")).string(), meta.data(), meta.size());
  std::lock_guard<std::mutex> g(mu_);
  files_.push_back(f);
  return f;
}

std::vector<FileInfo> FileStore::list(const std::string& owner) const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<FileInfo> out;
  for (const auto& f : files_)
    if (f.owner == owner) out.push_back(f);
  return out;
}

FileInfo FileStore::get(const std::string& owner, const std::string& id) const {
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& f : files_)
    if (f.id == id && f.owner == owner) return f;
  throw ApiError(404, "invalid_request_error", "no file with id '" + id + "'", "file_id", "file_not_found");
}

void FileStore::remove(const std::string& owner, const std::string& id) {
  std::lock_guard<std::mutex> g(mu_);
  for (auto it = files_.begin(); it != files_.end(); ++it)
    if (it->id == id && it->owner == owner) {
      fs::remove(content_path(*it));
      fs::remove(fs::path(dir_) / "files" / (id + ".json"));
      files_.erase(it);
      return;
    }
  throw ApiError(404, "invalid_request_error", "no file with id '" + id + "'", "file_id", "file_not_found");
}

}  // namespace graft::finetune
