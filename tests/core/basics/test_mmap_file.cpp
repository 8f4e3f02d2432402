#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

using namespace graft;
namespace fs = std::filesystem;

TEST(MappedFile, MapsAndAtomicWriteReplaces) {
  fs::path dir = fs::temp_directory_path() / ("graft_mmap_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string p = (dir / "a.bin").string();
  write_file_atomic(p, "hello", 5);
  write_file_atomic(p, "world!", 6);
  auto m = MappedFile::open(p);
  ASSERT_EQ(m->size(), 6u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), 6), "world!");
  EXPECT_EQ(read_text_file(p), "world!");
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  EXPECT_EQ(n, 1u) << "temporary files left behind";
  write_file_atomic((dir / "empty").string(), "", 0);
  EXPECT_EQ(MappedFile::open((dir / "empty").string())->size(), 0u);
  fs::remove_all(dir);
}

TEST(MappedFile, ClearErrors) {
  try {
    MappedFile::open("/nonexistent/graft/file");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/graft/file"), std::string::npos);
  }
  EXPECT_THROW(MappedFile::open("/tmp"), Error);  // a directory
  EXPECT_THROW(write_file_atomic("/nonexistent/dir/x", "a", 1), Error);
}
