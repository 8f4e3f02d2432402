#include "graft/mmap_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "graft/error.hpp"

namespace graft {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  GRAFT_CHECK_FIX(fd >= 0, "check that the path exists and is readable", "cannot open '{}': {}", path,
                  std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int e = errno;
    ::close(fd);
    GRAFT_FAIL("pass a regular file", "'{}' is not a regular file ({})", path, std::strerror(e));
  }
  auto f = std::shared_ptr<MappedFile>(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);
    GRAFT_CHECK(p != MAP_FAILED, "cannot mmap '{}' ({} bytes): {}", path, f->size_, std::strerror(e));
    f->data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GRAFT_CHECK_FIX(in.good(), "check that the path exists and is readable", "cannot open '{}': {}", path,
                  std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  GRAFT_CHECK(!in.bad(), "error reading '{}'", path);
  return ss.str();
}

void write_file_atomic(const std::string& path, const void* bytes, size_t size) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmpl = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmpl.data());
  GRAFT_CHECK_FIX(fd >= 0, "check that the directory exists and is writable", "cannot create a temporary file in '{}': {}",
                  dir.string(), std::strerror(errno));
  const char* p = static_cast<const char*>(bytes);
  size_t left = size;
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmpl.c_str());
      GRAFT_FAIL("free disk space or choose another output directory", "writing '{}' failed: {}", path,
                 std::strerror(e));
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmpl.c_str());
    GRAFT_FAIL("free disk space or choose another output directory", "flushing '{}' failed: {}", path, std::strerror(e));
  }
  ::chmod(tmpl.c_str(), 0644);
  if (::rename(tmpl.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmpl.c_str());
    GRAFT_FAIL("", "renaming the temporary file onto '{}' failed: {}", path, std::strerror(e));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace graft
