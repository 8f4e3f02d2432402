// Private helpers of the data pipeline (train/src/data/*.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/train/data.hpp"

namespace graft::train::data_detail {

using ojson = nlohmann::ordered_json;

// One record of a dataset file with where it came from (for error messages).
struct Record {
  ojson value;
  int64_t index = 0;  // 0-based record index
  int64_t line = 0;   // 1-based line (JSONL: the record's line; JSON array: line of the record's start)
};

// Parses a .json (array, or one object) or .jsonl file. Errors name the file and line.
std::vector<Record> read_records(const std::string& path);

// "file.jsonl line 12 (record 11)" / "file.json record 3 (line 40)".
std::string where(const std::string& path, const Record& r);

// Labels from a per-token "is a target" mask: labels[i] = ids[i+1] when target[i+1], else -100; last -100.
std::vector<int32_t> shift_labels(const std::vector<int32_t>& ids, const std::vector<uint8_t>& target);

// id of a token string (added token or vocabulary); -1 when unknown / empty.
int32_t token_id(const tokenizer::Tokenizer& tok, const std::string& token);
int32_t eos_id(const tokenizer::Tokenizer& tok);
int32_t bos_id(const tokenizer::Tokenizer& tok);  // -1 unless tokenizer_config.json says add_bos_token
// The same, mapped to the model's id when the tokenizer's lies outside the model's vocabulary
// (DataOptions::model_*).
int32_t eos_id(const tokenizer::Tokenizer& tok, const DataOptions& opt);
int32_t bos_id(const tokenizer::Tokenizer& tok, const DataOptions& opt);
// Maps bos/eos ids the model lacks to the model's (ids and labels); any other id outside the model's
// vocabulary throws, naming the token. No-op when opt.model_vocab_size is 0.
void map_to_model(Sample& s, const tokenizer::Tokenizer& tok, const DataOptions& opt);

// 64-bit FNV-1a (seeded) for cache keys and checksums.
uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace graft::train::data_detail
