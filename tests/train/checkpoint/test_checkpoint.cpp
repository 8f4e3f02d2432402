// HDF5 training checkpoints: bit-exact round trip of tensors, strings, ints and reals; atomic writes
// (an unwritable directory or a failed write leaves no file behind and keeps the previous checkpoint);
// clear errors for missing, truncated and corrupted files.
#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sys/resource.h>
#include <unistd.h>

#include "graft/error.hpp"
#include "graft/train/checkpoint.hpp"

using namespace graft;
using train::Checkpoint;
namespace fs = std::filesystem;

namespace {
class Ckpt : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("graft_ckpt_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(dir_);
  }
  std::string p(const std::string& s) const { return (dir_ / s).string(); }
  std::vector<std::string> files() const {
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  fs::path dir_;
};

Tensor rnd(const Dims& s, uint32_t seed) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0, 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = n(g);
  return t;
}

Checkpoint sample(int64_t step = 42) {
  Checkpoint c;
  c.step = step;
  c.tensors["lora/model.layers.0.self_attn.q_proj/A"] = rnd({8, 64}, 1);
  c.tensors["lora/model.layers.0.self_attn.q_proj/B"] = rnd({64, 8}, 2);
  c.tensors["adam_m/model.layers.0.self_attn.q_proj/A"] = rnd({8, 64}, 3);
  c.tensors["adam_v/model.layers.0.self_attn.q_proj/A"] = rnd({8, 64}, 4);
  c.tensors["lora/model.layers.1.mlp.experts.3.down_proj/A"] = rnd({4, 32}, 5);
  Tensor special = Tensor::empty({6}, DType::F32);
  const float sp[] = {std::numeric_limits<float>::quiet_NaN(), -0.0f, std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::denorm_min(), 1e-38f, -3.5f};
  std::copy(sp, sp + 6, special.data<float>());
  c.tensors["special"] = special;
  c.tensors["empty"] = Tensor::empty({0, 5}, DType::F32);
  Tensor scalar = Tensor::empty({}, DType::F64);
  *scalar.data<double>() = 3.25;
  c.tensors["scalar_f64"] = scalar;
  Tensor ids = Tensor::empty({3}, DType::I64);
  ids.data<int64_t>()[0] = -1, ids.data<int64_t>()[1] = int64_t{1} << 60, ids.data<int64_t>()[2] = 7;
  c.tensors["data/order"] = ids;
  c.tensors["bf16"] = rnd({3, 3}, 6).to(DType::BF16);
  c.strings["rng"] = "mt19937_64 state 1 2 3 ...";
  c.strings["recipe"] = std::string(200000, 'x') + "\nlora_r: 8\n";  // larger than HDF5's 64 KB compact attribute limit
  c.strings["with_nul"] = std::string("a\0b\0", 4);
  c.strings["empty"] = "";
  c.strings["recipe_hash"] = "sha256:0123abcd";
  c.ints["data_cursor"] = 123456789012345;
  c.ints["epoch"] = -2;
  c.reals["lr"] = 1.0 / 3.0;
  c.reals["neg_zero"] = -0.0;
  c.reals["tiny"] = std::numeric_limits<double>::denorm_min();
  return c;
}

void expect_equal(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.step, b.step);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (auto& [n, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(n)) << n;
    const Tensor& u = b.tensors.at(n);
    EXPECT_EQ(t.dtype(), u.dtype()) << n;
    EXPECT_EQ(t.shape(), u.shape()) << n;
    EXPECT_EQ(std::memcmp(t.raw(), u.raw(), t.nbytes()), 0) << n;
  }
  EXPECT_EQ(a.strings, b.strings);
  EXPECT_EQ(a.ints, b.ints);
  ASSERT_EQ(a.reals.size(), b.reals.size());
  for (auto& [k, v] : a.reals) EXPECT_EQ(std::memcmp(&v, &b.reals.at(k), sizeof v), 0) << k;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const graft::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_F(Ckpt, RoundTripIsBitExact) {
  const Checkpoint c = sample();
  train::save_checkpoint(p("ck.h5"), c);
  expect_equal(c, train::load_checkpoint(p("ck.h5")));
  EXPECT_EQ(files(), (std::vector<std::string>{"ck.h5"}));  // no temp files left
  // Overwriting replaces the file atomically.
  const Checkpoint d = sample(43);
  train::save_checkpoint(p("ck.h5"), d);
  EXPECT_EQ(train::load_checkpoint(p("ck.h5")).step, 43);
  // An empty checkpoint is valid too.
  train::save_checkpoint(p("empty.h5"), Checkpoint{});
  expect_equal(Checkpoint{}, train::load_checkpoint(p("empty.h5")));
}

TEST_F(Ckpt, MissingTruncatedAndCorruptFilesAreClearErrors) {
  std::string err = error_of([&] { train::load_checkpoint(p("nope.h5")); });
  EXPECT_NE(err.find("nope.h5"), std::string::npos) << err;
  EXPECT_NE(err.find("not found"), std::string::npos) << err;

  train::save_checkpoint(p("ck.h5"), sample());
  const auto size = fs::file_size(p("ck.h5"));
  // Truncated (a crash of a non-atomic writer, a partial copy).
  fs::copy_file(p("ck.h5"), p("trunc.h5"));
  fs::resize_file(p("trunc.h5"), size / 2);
  err = error_of([&] { train::load_checkpoint(p("trunc.h5")); });
  EXPECT_NE(err.find("trunc.h5"), std::string::npos) << err;
  EXPECT_NE(err.find("corrupt"), std::string::npos) << err;
  // Not HDF5 at all.
  {
    std::ofstream f(p("garbage.h5"));
    f << "this is not a checkpoint";
  }
  err = error_of([&] { train::load_checkpoint(p("garbage.h5")); });
  EXPECT_NE(err.find("garbage.h5"), std::string::npos) << err;
  // Flipped bytes anywhere in the file: metadata checksums or Fletcher-32 data checksums catch them.
  std::string bytes;
  {
    std::ifstream f(p("ck.h5"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  // Damage the bytes of a tensor's data: find the first 16 bytes of a known tensor in the file.
  const Checkpoint c = sample();
  const Tensor& t = c.tensors.at("lora/model.layers.0.self_attn.q_proj/B");
  const size_t at = bytes.find(std::string(static_cast<const char*>(t.raw()), 16));
  ASSERT_NE(at, std::string::npos);
  std::string bad = bytes;
  bad[at + 5] = static_cast<char>(bad[at + 5] ^ 0x40);
  {
    std::ofstream f(p("flip.h5"), std::ios::binary);
    f.write(bad.data(), static_cast<std::streamsize>(bad.size()));
  }
  err = error_of([&] { train::load_checkpoint(p("flip.h5")); });
  EXPECT_NE(err.find("flip.h5"), std::string::npos) << err;
  EXPECT_NE(err.find("lora/model.layers.0.self_attn.q_proj/B"), std::string::npos) << err;
  // Damage in the middle of the metadata (superblock / object headers near the start).
  bad = bytes;
  for (size_t i = 40; i < 200 && i < bad.size(); ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
  {
    std::ofstream f(p("meta.h5"), std::ios::binary);
    f.write(bad.data(), static_cast<std::streamsize>(bad.size()));
  }
  err = error_of([&] { train::load_checkpoint(p("meta.h5")); });
  EXPECT_NE(err.find("meta.h5"), std::string::npos) << err;
}

TEST_F(Ckpt, UnwritableDirectoryLeavesNothing) {
  // A directory that does not exist.
  std::string err = error_of([&] { train::save_checkpoint(p("missing/ck.h5"), sample()); });
  EXPECT_NE(err.find("missing"), std::string::npos) << err;
  // A directory nobody can create files in, even root: /proc.
  if (fs::is_directory("/proc")) {
    err = error_of([&] { train::save_checkpoint("/proc/graft_checkpoint_test.h5", sample()); });
    EXPECT_NE(err.find("/proc/graft_checkpoint_test.h5"), std::string::npos) << err;
    EXPECT_FALSE(fs::exists("/proc/graft_checkpoint_test.h5"));
  }
  // A read-only directory (only meaningful when not running as root).
  if (::geteuid() != 0) {
    fs::create_directories(dir_ / "ro");
    fs::permissions(dir_ / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    err = error_of([&] { train::save_checkpoint(p("ro/ck.h5"), sample()); });
    EXPECT_NE(err.find("not writable"), std::string::npos) << err;
    fs::permissions(dir_ / "ro", fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir_ / "ro"));
  }
}

// A write that fails half way (the disk fills up) must leave the previous checkpoint intact and no
// temp file behind. RLIMIT_FSIZE makes write(2) fail with EFBIG past the limit, like ENOSPC would.
TEST_F(Ckpt, FailedWriteKeepsPreviousCheckpoint) {
  train::save_checkpoint(p("ck.h5"), sample(1));
  Checkpoint big = sample(2);
  big.tensors["huge"] = rnd({1024, 1024}, 9);  // 4 MB
  struct sigaction ign{}, old{};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ign, &old), 0);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit lim = saved;
  lim.rlim_cur = 1 << 20;  // 1 MB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  const std::string err = error_of([&] { train::save_checkpoint(p("ck.h5"), big); });
  setrlimit(RLIMIT_FSIZE, &saved);
  sigaction(SIGXFSZ, &old, nullptr);
  EXPECT_NE(err.find("ck.h5"), std::string::npos) << err;
  EXPECT_EQ(files(), (std::vector<std::string>{"ck.h5"}));
  expect_equal(sample(1), train::load_checkpoint(p("ck.h5")));
}

TEST_F(Ckpt, RejectsBadNamesAndWrongFormat) {
  Checkpoint c;
  c.tensors["a//b"] = rnd({2}, 1);
  EXPECT_NE(error_of([&] { train::save_checkpoint(p("x.h5"), c); }).find("a//b"), std::string::npos);
  c.tensors.clear();
  c.tensors["a"] = rnd({2}, 1);
  c.tensors["a/b"] = rnd({2}, 1);  // "a" cannot be both a tensor and a group
  EXPECT_NE(error_of([&] { train::save_checkpoint(p("x.h5"), c); }).find("a/b"), std::string::npos);
  c.tensors.clear();
  c.ints["bad/key"] = 1;
  EXPECT_NE(error_of([&] { train::save_checkpoint(p("x.h5"), c); }).find("bad/key"), std::string::npos);
  EXPECT_EQ(files(), std::vector<std::string>{});
}

// A SIGKILL between writing a checkpoint's temp file and renaming it leaves ".NAME.h5.tmp.XXXXXX"
// behind; the trainer removes such files when it starts (tests/finetune/jobs checks it on a resume).
TEST_F(Ckpt, StaleTempFilesOfInterruptedSavesAreRemoved) {
  train::save_checkpoint(p("step-00000002.h5"), sample());
  std::string tmpl = p(".step-00000004.h5.tmp.XXXXXX");  // write_file_atomic's temp name
  const int fd = ::mkstemp(tmpl.data());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "partial", 7), 7);
  ::close(fd);
  std::ofstream(p(".notes.tmp.abcdef")) << "not a checkpoint temp";
  std::ofstream(p("step-00000003.h5.tmp.abcdef")) << "no leading dot: not ours";
  fs::create_directories(p(".step-00000009.h5.tmp.zzzzzz"));  // a directory is never removed
  const auto removed = train::remove_stale_checkpoint_temps(dir_.string());
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], tmpl);
  EXPECT_EQ(files(), (std::vector<std::string>{".notes.tmp.abcdef", ".step-00000009.h5.tmp.zzzzzz", "step-00000002.h5",
                                               "step-00000003.h5.tmp.abcdef"}));
  EXPECT_EQ(train::load_checkpoint(p("step-00000002.h5")).step, sample().step);
  EXPECT_TRUE(train::remove_stale_checkpoint_temps(dir_.string()).empty());
  EXPECT_TRUE(train::remove_stale_checkpoint_temps(p("missing")).empty());
}
