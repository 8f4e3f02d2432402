// graft::train data pipeline: dataset formats -> token ids + loss labels, chat-template loss masks,
// sample packing, train/validation split and an HDF5 cache of tokenized datasets.
//
//   DatasetSpec spec; spec.path = "data/train.jsonl"; spec.type = "chat_template";
//   DataOptions opt; opt.sequence_len = 4096;
//   DataStats st;
//   auto samples = load_dataset(spec, tok, &tpl, opt, &st);      // or load_dataset_cached(...)
//   auto [train, val] = split_validation(std::move(samples), 0.05, seed);
//   auto packed = pack(train, opt.sequence_len);
//
// Label convention: labels are already shifted. labels[i] is the token the model must predict at
// position i (ids[i+1]) or -100 when position i carries no loss; the last position is always -100.
// See docs/data.md for the formats, masking rules, packing and the cache.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/chat_template/chat_template.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::train {

inline constexpr int32_t kIgnoreIndex = -100;

struct Sample {
  std::vector<int32_t> ids, labels;  // same length; labels shifted (labels[i] = ids[i+1] where trained)
  bool operator==(const Sample&) const = default;
};

struct DatasetSpec {
  std::string path;                       // local .json (array) or .jsonl file
  std::string type = "chat_template";     // alpaca | sharegpt | chat_template | completion | pretokenized
  std::string field_messages = "messages";  // chat_template: key of the turns (sharegpt: "conversations")
  std::map<std::string, std::string> message_property_mappings;  // e.g. {role: from, content: value}
  std::map<std::string, std::string> roles;  // raw role -> template role, e.g. {human: user, gpt: assistant}
  std::vector<std::string> roles_to_train = {"assistant"};
  std::string train_on_eos = "turn";      // turn | last | all | none
};

struct DataOptions {
  int64_t sequence_len = 2048;
  bool train_on_inputs = false;      // true: loss on every token
  bool add_eos = true;               // completion / alpaca without template: append EOS
  std::string truncation = "drop";   // drop | truncate (samples longer than sequence_len)
  std::string chat_template;         // empty = the template given / tokenizer_config.json's; else a source
  // Extra template variables passed to every render (e.g. {"enable_thinking": false}).
  nlohmann::ordered_json chat_template_kwargs = nlohmann::ordered_json::object();
  // The model's side of the ids (set_model_token_ids): embedding rows and config.json /
  // generation_config.json BOS/EOS; 0 / -1 = unknown. A tokenizer may give bos_token / eos_token an id
  // the model does not have (stories260K: the added token `<s>` gets 512 in a 512-row vocabulary while
  // config.json says bos_token_id 1); such ids become the model's, and any other id outside
  // [0, model_vocab_size) is an error naming the token.
  int64_t model_vocab_size = 0;
  int32_t model_bos_id = -1, model_eos_id = -1;
};

// Fills options.model_vocab_size / model_bos_id / model_eos_id from the model directory (config.json,
// generation_config.json; either may be absent) and the model's vocabulary size.
void set_model_token_ids(DataOptions& options, const std::string& model_dir, int64_t vocab_size);

// What load_dataset did (optional out-parameter).
struct DataStats {
  int64_t records = 0;            // records read from the file
  int64_t samples = 0;            // samples returned
  int64_t dropped_too_long = 0;   // over sequence_len with truncation = drop
  int64_t truncated = 0;          // over sequence_len with truncation = truncate
  int64_t dropped_no_loss = 0;    // samples without any trained token
  int64_t tokens = 0;             // total tokens returned
  int64_t trained_tokens = 0;     // labels != -100
  bool cache_hit = false;         // load_dataset_cached only
  std::string cache_file;         // load_dataset_cached only
};

// Reads and tokenizes a dataset. `tpl` may be null: then options.chat_template, else the tokenizer's
// tokenizer_config.json template is used where a template is needed (chat_template, sharegpt).
// alpaca uses a template only when `tpl` or options.chat_template is given. Throws graft::Error
// (naming file, line/record and field, with a fix) on malformed input.
std::vector<Sample> load_dataset(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                 const chat_template::ChatTemplate* tpl, const DataOptions& options,
                                 DataStats* stats = nullptr);

// The dataset type a record's fields imply: messages -> chat_template, conversations -> sharegpt,
// instruction -> alpaca, input_ids -> pretokenized, text -> completion (checked in this order); "" when
// none applies.
std::string detect_record_type(const nlohmann::ordered_json& record);
// The type of a dataset file: every record must imply the same one. Throws naming the first record
// that has none of the fields or implies another type.
std::string detect_dataset_type(const std::string& path);

// Tokenizes one conversation (OpenAI messages, roles already mapped) into a sample with the loss
// mask of `spec` (roles_to_train, train_on_eos). Exposed for tests and for the CLI's `inspect`.
Sample tokenize_conversation(const nlohmann::ordered_json& messages, const nlohmann::ordered_json* tools,
                             const tokenizer::Tokenizer& tok, const chat_template::ChatTemplate& tpl,
                             const DatasetSpec& spec, const DataOptions& options);

struct PackedSequence {
  std::vector<int32_t> ids, labels, positions, segments;  // positions restart per sample; segments = index
  bool operator==(const PackedSequence&) const = default;
};

// Greedy first-fit in input order, deterministic; no padding (sequences are at most sequence_len long).
// Samples longer than sequence_len are dropped (truncation "drop") or cut ("truncate").
std::vector<PackedSequence> pack(const std::vector<Sample>& samples, int64_t sequence_len,
                                 const std::string& truncation = "drop");

// Random split (seeded Fisher-Yates over indices, portable): val_set_size < 1 is a fraction
// (ceil(fraction * n) samples), >= 1 a count. Both parts keep the original order.
std::pair<std::vector<Sample>, std::vector<Sample>> split_validation(std::vector<Sample> samples,
                                                                     double val_set_size, uint64_t seed);

// load_dataset through a cache `<cache_dir>/<hash>.h5` keyed by (file bytes, tokenizer.json bytes,
// template source, spec, options). A hit returns identical samples; a corrupt file is rebuilt.
std::vector<Sample> load_dataset_cached(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                        const std::string& tokenizer_json_text,
                                        const chat_template::ChatTemplate* tpl, const DataOptions& options,
                                        const std::string& cache_dir, DataStats* stats = nullptr);

// The cache key (32 hex digits) load_dataset_cached uses; template_source is the effective template
// (see effective_template_source).
std::string dataset_cache_key(const DatasetSpec& spec, const std::string& tokenizer_json_text,
                              const std::string& template_source, const DataOptions& options);
// The source of the template load_dataset would use for `spec` ("" when none).
std::string effective_template_source(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                      const chat_template::ChatTemplate* tpl, const DataOptions& options);

// HDF5 cache file I/O (exposed for tests). read returns false when the file is missing or invalid.
void write_sample_cache(const std::string& path, const std::string& key, const std::vector<Sample>& samples);
bool read_sample_cache(const std::string& path, const std::string& key, std::vector<Sample>& samples);

}  // namespace graft::train
