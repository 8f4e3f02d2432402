// safetensors reader/writer: round trips, sharded index, and malformed/hostile files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"

using namespace graft;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path p;
  TempDir() {
    static int n = 0;
    p = fs::temp_directory_path() / ("graft_st_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(p);
  }
  ~TempDir() { fs::remove_all(p); }
  std::string operator/(const std::string& f) const { return (p / f).string(); }
};

Tensor pattern(const Dims& shape, DType dt, uint8_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* b = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

// A file image from a header string and `data_bytes` zero bytes; `len_override` replaces N.
std::string image(const std::string& header, size_t data_bytes = 0, int64_t len_override = -1) {
  uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  s += header;
  s.append(data_bytes, '\0');
  return s;
}

// Parses `img` and returns the error message ("" when it parsed).
std::string parse_error(const std::string& img) {
  try {
    io::parse_safetensors_header(reinterpret_cast<const uint8_t*>(img.data()), img.size(), "bad.safetensors");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << "error must name the file: " << e.what();
    return e.what();
  }
  return "";
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream o(path, std::ios::binary);
  o.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST(Safetensors, RoundTripAllDTypesScalarsEmptyAndMetadata) {
  TempDir d;
  io::NamedTensors in;
  uint8_t seed = 1;
  for (DType dt : kAllDTypes) {
    in.emplace_back(std::string("t_") + std::string(dtype_name(dt)), pattern({2, 3}, dt, seed++));
    in.emplace_back(std::string("scalar_") + std::string(dtype_name(dt)), pattern({}, dt, seed++));
  }
  in.emplace_back("empty", Tensor::zeros({0, 4}, DType::F32));
  in.emplace_back("odd_bf16", pattern({3}, DType::BF16, 99));
  std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "héllo \"quoted\""}};
  std::string path = d / "m.safetensors";
  io::save_safetensors(path, in, meta);

  auto f = io::SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(f.contains(name)) << name;
    Tensor r = f.tensor(name);
    EXPECT_TRUE(same_bytes(t, r)) << name;
    EXPECT_EQ(r.ndim(), t.ndim()) << name;
  }
  // Header padded with spaces to 8 bytes; Reference order keeps every tensor naturally aligned.
  EXPECT_EQ(f.header().header_bytes % 8, 0u);
  auto m = MappedFile::open(path);
  EXPECT_EQ(m->data()[8 + f.header().header_bytes - 1] == ' ' || m->data()[8 + f.header().header_bytes - 1] == '}', true);
  for (const auto& t : f.tensors())
    EXPECT_EQ((f.header().data_start + t.begin) % dtype_size(t.dtype), 0u) << t.name << " misaligned";
  // Reference order: dtype size descending, then name.
  for (size_t i = 1; i < f.tensors().size(); ++i) {
    const auto &a = f.tensors()[i - 1], &b = f.tensors()[i];
    if (a.begin == b.begin) continue;  // empty tensors share offsets
    size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    EXPECT_TRUE(sa > sb || (sa == sb && a.name < b.name)) << a.name << " before " << b.name;
  }
  // The streamed file equals the in-memory serialization.
  auto bytes = io::serialize_safetensors(in, meta);
  ASSERT_EQ(bytes.size(), m->size());
  EXPECT_EQ(std::memcmp(bytes.data(), m->data(), bytes.size()), 0);
  // No temporary files left behind.
  size_t files = 0;
  for (auto& e : fs::directory_iterator(d.p)) (void)e, ++files;
  EXPECT_EQ(files, 1u);
}

TEST(Safetensors, WriteOrdersStridedInputAndKeepalive) {
  TempDir d;
  Tensor a = pattern({2, 3}, DType::F32, 5);
  Tensor at = a.transpose(0, 1);  // strided: written contiguous
  io::save_safetensors(d / "g.safetensors", {{"z", pattern({3}, DType::BF16, 1)}, {"a", at}}, {}, io::WriteOrder::Given);
  Tensor view;
  {
    auto f = io::SafetensorsFile::open(d / "g.safetensors");
    EXPECT_EQ(f.tensors()[0].name, "z");
    EXPECT_EQ(f.tensors()[1].name, "a");
    EXPECT_TRUE(f.metadata().empty());
    view = f.tensor("a");
  }
  // The SafetensorsFile is gone; the view keeps the mapping alive.
  EXPECT_TRUE(same_bytes(view, at.contiguous()));
  EXPECT_EQ(view.shape(), (Dims{3, 2}));

  io::save_safetensors(d / "n.safetensors", {{"b", pattern({1}, DType::U8, 1)}, {"a", pattern({1}, DType::F64, 1)}}, {},
                       io::WriteOrder::ByName);
  auto f = io::SafetensorsFile::open(d / "n.safetensors");
  EXPECT_EQ(f.tensors()[0].name, "a");
  EXPECT_THROW(io::save_safetensors(d / "dup.safetensors", {{"x", a}, {"x", a}}), Error);
  EXPECT_FALSE(fs::exists(d / "dup.safetensors"));
  EXPECT_THROW(io::save_safetensors(d / "utf.safetensors", {{"bad\xff", a}}), Error);  // invalid UTF-8 name
  EXPECT_THROW(io::save_safetensors(d / "meta.safetensors", {{"__metadata__", a}}), Error);
  EXPECT_THROW(io::save_safetensors(d / "nodir/x.safetensors", {{"x", a}}), Error);
  size_t n = 0;
  for (auto& e : fs::directory_iterator(d.p)) (void)e, ++n;
  EXPECT_EQ(n, 2u) << "failed writes must not leave files behind";
  try {
    f.tensor("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
}

TEST(Safetensors, ReadsTheSharedStoriesFile) {
  std::string p = std::string(GRAFT_SOURCE_DIR) + "/../shared/assets/models/stories260K_hf_llama/model.safetensors";
  if (!fs::exists(p)) GTEST_SKIP() << "shared assets absent: " << p;
  auto f = io::SafetensorsFile::open(p);
  EXPECT_EQ(f.tensors().size(), 47u);
  auto e = f.tensor("model.embed_tokens.weight");
  EXPECT_EQ(e.shape(), (Dims{512, 64}));
  EXPECT_EQ(e.dtype(), DType::F32);
}

TEST(Safetensors, ShardedIndex) {
  TempDir d;
  Tensor a = pattern({4}, DType::F32, 1), b = pattern({2, 2}, DType::BF16, 2), c = pattern({3}, DType::I32, 3);
  io::save_safetensors(d / "model-00001-of-00002.safetensors", {{"a", a}, {"b", b}});
  io::save_safetensors(d / "model-00002-of-00002.safetensors", {{"c", c}});
  auto write_index = [&](const nlohmann::json& wm) {
    nlohmann::json j = {{"metadata", {{"total_size", 100}}}, {"weight_map", wm}};
    std::ofstream(d / "model.safetensors.index.json") << j.dump();
  };
  nlohmann::json good = {{"a", "model-00001-of-00002.safetensors"},
                         {"b", "model-00001-of-00002.safetensors"},
                         {"c", "model-00002-of-00002.safetensors"}};
  write_index(good);
  auto m = io::SafetensorsModel::open(d.p.string());
  EXPECT_EQ(m.files().size(), 2u);  // each shard mapped once
  EXPECT_EQ(m.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(same_bytes(m.tensor("b"), b));
  EXPECT_TRUE(same_bytes(m.tensor("c"), c));
  EXPECT_TRUE(io::SafetensorsModel::has_weights(d.p.string()));

  auto expect_error = [&](const nlohmann::json& wm, const std::string& needle) {
    write_index(wm);
    try {
      io::SafetensorsModel::open(d.p.string());
      ADD_FAILURE() << "expected an error containing: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto missing = good;
  missing["c"] = "model-00003-of-00002.safetensors";
  expect_error(missing, "missing shard");
  auto absent = good;
  absent["zzz"] = "model-00001-of-00002.safetensors";
  expect_error(absent, "does not contain it");
  auto unlisted = good;
  unlisted.erase("b");
  expect_error(unlisted, "contains tensor 'b', which");
  expect_error(unlisted, "does not list");
  auto wrong = good;
  wrong["a"] = "model-00002-of-00002.safetensors";
  expect_error(wrong, "does not contain it");
  auto traversal = good;
  traversal["a"] = "../evil.safetensors";
  expect_error(traversal, "not a plain file name");
  expect_error(nlohmann::json::array(), "'weight_map' is a array");
  auto notstr = good;
  notstr["a"] = 3;
  expect_error(notstr, "weight_map['a']");
}

TEST(Safetensors, DirectoryForms) {
  TempDir d;
  EXPECT_FALSE(io::SafetensorsModel::has_weights(d.p.string()));
  EXPECT_THROW(io::SafetensorsModel::open(d.p.string()), Error);
  io::save_safetensors(d / "weights.safetensors", {{"x", pattern({2}, DType::F32, 1)}});
  EXPECT_EQ(io::SafetensorsModel::open(d.p.string()).size(), 1u);  // the only .safetensors file
  io::save_safetensors(d / "other.safetensors", {{"y", pattern({2}, DType::F32, 1)}});
  try {
    io::SafetensorsModel::open(d.p.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 .safetensors files but no model.safetensors.index.json"), std::string::npos)
        << e.what();
  }
  io::save_safetensors(d / "model.safetensors", {{"z", pattern({2}, DType::F32, 1)}});
  EXPECT_TRUE(io::SafetensorsModel::open(d.p.string()).contains("z"));
}

TEST(Safetensors, MalformedHeadersGiveClearErrors) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  EXPECT_EQ(parse_error(image("{" + ok_entry + "}", 8)), "");

  struct Case {
    const char* what;
    std::string img;
    const char* needle;
  };
  std::vector<Case> cases = {
      {"tiny file", std::string("abc"), "shorter than the 8-byte header length"},
      {"truncated header", image("{" + ok_entry + "}", 8).substr(0, 30), "larger than the file"},
      {"length > file", image("{}", 0, 1000), "larger than the file"},
      {"length > limit", image("{}", 0, 200'000'000), "exceeds the 100000000 byte limit"},
      {"length u64 max", image("{}", 0, -2).replace(0, 8, std::string(8, '\xff')), "exceeds"},
      {"bad json", image(R"({"a": {"dtype": "F32",)"), "not valid JSON"},
      {"non-object", image("[1,2,3]"), "not a JSON object"},
      {"trailing garbage", image("{} x"), "not valid JSON"},
      {"entry not object", image(R"({"a": 3})"), "tensor 'a': entry is a number"},
      {"missing dtype", image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "tensor 'a': missing field 'dtype'"},
      {"dtype not string", image(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8), "field 'dtype' is a number"},
      {"unknown dtype", image(R"({"a":{"dtype":"XYZ","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'XYZ'"},
      {"unsupported dtype F4", image(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1),
       "tensor 'a': dtype 'F4' is a safetensors dtype graft does not support"},
      {"missing shape", image(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), "missing field 'shape'"},
      {"negative shape", image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "shape entry -2 is not a non-negative integer"},
      {"float shape", image(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       "shape entry 2.5 is not a non-negative integer"},
      {"string shape", image(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8), "shape entry \"2\""},
      {"too many dims", image(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1),
       "9 dimensions"},
      {"shape overflow", image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
       "overflows the element count"},
      {"byte overflow", image(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
       "overflows the byte count"},
      {"shape > u64", image(R"({"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,8]}})", 8),
       "is not a non-negative integer"},
      {"missing offsets", image(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "missing field 'data_offsets'"},
      {"offsets arity", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "must be [begin, end]"},
      {"offsets negative", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       "are not non-negative integers"},
      {"offsets reversed", image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), "begin 8 > end 0"},
      {"offsets out of range", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
       "tensor 'a': data_offsets end 16 is past the end of the data (8 bytes)"},
      {"size mismatch", image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 16), "size mismatch"},
      {"overlap",
       image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             12),
       "tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
      {"duplicate names",
       image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
             16),
       "duplicate tensor name 'a'"},
      {"duplicate field", image(R"({"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", 8),
       "duplicate key 'dtype'"},
      {"unknown field", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8), "unknown field 'x'"},
      {"metadata non-string", image(R"({"__metadata__":{"n":1}})"), "__metadata__ value for key 'n' is a number"},
      {"metadata not object", image(R"({"__metadata__":[1]})"), "__metadata__ is a array"},
      {"deep nesting", image("{\"a\":" + std::string(200, '[') + std::string(200, ']') + "}"), "nested"},
  };
  for (const auto& c : cases) {
    std::string msg = parse_error(c.img);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.what << ": got '" << msg << "'";
  }
}

TEST(Safetensors, TruncatedFileOnDisk) {
  TempDir d;
  io::save_safetensors(d / "ok.safetensors", {{"w", pattern({16}, DType::F32, 1)}});
  auto bytes = MappedFile::open(d / "ok.safetensors");
  std::string s(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  write_raw(d / "cut.safetensors", s.substr(0, s.size() - 5));
  try {
    io::SafetensorsFile::open(d / "cut.safetensors");
    FAIL();
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("cut.safetensors"), std::string::npos) << w;
    EXPECT_NE(w.find("tensor 'w'"), std::string::npos) << w;
    EXPECT_NE(w.find("past the end of the data"), std::string::npos) << w;
  }
  write_raw(d / "empty.safetensors", "");
  EXPECT_THROW(io::SafetensorsFile::open(d / "empty.safetensors"), Error);
}
