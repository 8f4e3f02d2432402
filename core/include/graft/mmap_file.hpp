// Read-only memory-mapped files. The mapping lives as long as any shared_ptr to it does, so
// tensors that view mmapped weights keep their file mapped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace graft {

class MappedFile {
 public:
  // Maps `path` read-only. Throws graft::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Reads a whole (small) file into a string. Throws graft::Error naming the path on failure.
std::string read_text_file(const std::string& path);
// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
void write_file_atomic(const std::string& path, const void* bytes, size_t size);

}  // namespace graft
