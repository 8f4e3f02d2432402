// Recipe output: recipe_to_yaml (every key with its effective value) and recipe_hash_json (the
// canonical JSON the recipe hash covers). Both walk the schema by reflection, in declaration order.
#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "graft/train/recipe.hpp"
#include "recipe_json.hpp"

namespace graft::train {
namespace {
using recipe_detail::json_escape;
namespace pb = google::protobuf;
using FD = pb::FieldDescriptor;

std::string number_text(double v) { return fmt::format("{}", v); }


// Scalar value of a (non-repeated) field, or element `idx` of a repeated field (idx >= 0).
std::string scalar_text(const pb::Message& m, const FD* f, int idx, bool json) {
  const pb::Reflection* r = m.GetReflection();
  const bool rep = idx >= 0;
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32: return std::to_string(rep ? r->GetRepeatedInt32(m, f, idx) : r->GetInt32(m, f));
    case FD::CPPTYPE_INT64: return std::to_string(rep ? r->GetRepeatedInt64(m, f, idx) : r->GetInt64(m, f));
    case FD::CPPTYPE_UINT32: return std::to_string(rep ? r->GetRepeatedUInt32(m, f, idx) : r->GetUInt32(m, f));
    case FD::CPPTYPE_UINT64: return std::to_string(rep ? r->GetRepeatedUInt64(m, f, idx) : r->GetUInt64(m, f));
    case FD::CPPTYPE_DOUBLE: return number_text(rep ? r->GetRepeatedDouble(m, f, idx) : r->GetDouble(m, f));
    case FD::CPPTYPE_FLOAT: return number_text(rep ? r->GetRepeatedFloat(m, f, idx) : r->GetFloat(m, f));
    case FD::CPPTYPE_BOOL: return (rep ? r->GetRepeatedBool(m, f, idx) : r->GetBool(m, f)) ? "true" : "false";
    case FD::CPPTYPE_STRING: {
      std::string s = rep ? r->GetRepeatedString(m, f, idx) : r->GetString(m, f);
      return json ? json_escape(s) : s;
    }
    default: return json ? "null" : "";
  }
}

// Map entries of a map field, sorted by key.
std::vector<std::pair<std::string, const pb::Message*>> sorted_entries(const pb::Message& m, const FD* f) {
  const pb::Reflection* r = m.GetReflection();
  const FD* kf = f->message_type()->map_key();
  std::vector<std::pair<std::string, const pb::Message*>> out;
  for (int i = 0; i < r->FieldSize(m, f); ++i) {
    const pb::Message& e = r->GetRepeatedMessage(m, f, i);
    out.emplace_back(scalar_text(e, kf, -1, false), &e);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

// ---------------- canonical JSON ----------------

void json_message(const pb::Message& m, const pb::Message* dflt, const std::set<std::string>* skip, std::string& o);

void json_field(const pb::Message& m, const FD* f, std::string& o) {
  const pb::Reflection* r = m.GetReflection();
  if (f->is_map()) {
    const FD* vf = f->message_type()->map_value();
    o += '{';
    bool first = true;
    for (auto& [k, e] : sorted_entries(m, f)) {
      if (!first) o += ',';
      first = false;
      o += json_escape(k) + ':';
      if (vf->cpp_type() == FD::CPPTYPE_MESSAGE)
        json_message(e->GetReflection()->GetMessage(*e, vf), nullptr, nullptr, o);
      else
        o += scalar_text(*e, vf, -1, true);
    }
    o += '}';
  } else if (f->is_repeated()) {
    o += '[';
    for (int i = 0; i < r->FieldSize(m, f); ++i) {
      if (i) o += ',';
      if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
        const pb::Message& e = r->GetRepeatedMessage(m, f, i);
        json_message(e, nullptr, nullptr, o);
      } else {
        o += scalar_text(m, f, i, true);
      }
    }
    o += ']';
  } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
    if (r->HasField(m, f))
      json_message(r->GetMessage(m, f), nullptr, nullptr, o);
    else
      o += "null";
  } else if (f->has_presence() && !r->HasField(m, f)) {
    o += "null";
  } else {
    o += scalar_text(m, f, -1, true);
  }
}

void json_message(const pb::Message& m, const pb::Message* dflt, const std::set<std::string>* skip, std::string& o) {
  const pb::Descriptor* d = m.GetDescriptor();
  o += '{';
  bool first = true;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    if (skip && skip->count(f->name())) continue;
    std::string frag;
    json_field(m, f, frag);
    if (dflt) {
      std::string dfrag;
      json_field(*dflt, f, dfrag);
      if (frag == dfrag) continue;
    }
    if (!first) o += ',';
    first = false;
    o += json_escape(f->name()) + ':' + frag;
  }
  o += '}';
}

// ---------------- YAML ----------------

// Strings that read back as the same string when written without quotes: names, paths, ids.
bool plain_safe(const std::string& s) {
  static const std::set<std::string> reserved = {"null", "Null", "NULL", "~",   "true", "True", "TRUE", "false",
                                                 "False", "FALSE", "yes",  "Yes", "YES",  "no",   "No",  "NO",
                                                 "on",   "On",   "ON",   "off", "Off",  "OFF", "y", "n", "Y", "N"};
  if (s.empty() || reserved.count(s)) return false;
  if (!(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == '/')) return false;
  for (unsigned char c : s)
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '/')) return false;
  return true;
}

void yaml_scalar(YAML::Emitter& e, const pb::Message& m, const FD* f, int idx) {
  std::string s = scalar_text(m, f, idx, false);
  if (f->cpp_type() == FD::CPPTYPE_STRING) {
    if (s.find('\n') != std::string::npos)
      e << YAML::Literal << s;
    else if (plain_safe(s))
      e << s;
    else
      e << YAML::DoubleQuoted << s;
  } else {
    e << s;
  }
}

void yaml_message(YAML::Emitter& e, const pb::Message& m);

void yaml_field(YAML::Emitter& e, const pb::Message& m, const FD* f) {
  const pb::Reflection* r = m.GetReflection();
  if (f->is_map()) {
    const FD* kf = f->message_type()->map_key();
    const FD* vf = f->message_type()->map_value();
    auto entries = sorted_entries(m, f);
    if (entries.empty()) {
      e << YAML::Flow << YAML::BeginMap << YAML::EndMap;
      return;
    }
    e << YAML::BeginMap;
    for (auto& [k, en] : entries) {
      e << YAML::Key;
      yaml_scalar(e, *en, kf, -1);
      e << YAML::Value;
      if (vf->cpp_type() == FD::CPPTYPE_MESSAGE) {
        // RoleAliases: written as a plain list.
        const pb::Message& v = en->GetReflection()->GetMessage(*en, vf);
        const FD* vals = v.GetDescriptor()->FindFieldByName("values");
        e << YAML::Flow << YAML::BeginSeq;
        for (int i = 0; i < v.GetReflection()->FieldSize(v, vals); ++i) yaml_scalar(e, v, vals, i);
        e << YAML::EndSeq;
      } else {
        yaml_scalar(e, *en, vf, -1);
      }
    }
    e << YAML::EndMap;
  } else if (f->is_repeated()) {
    const int n = r->FieldSize(m, f);
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      if (n == 0) {
        e << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      e << YAML::BeginSeq;
      for (int i = 0; i < n; ++i) yaml_message(e, r->GetRepeatedMessage(m, f, i));
      e << YAML::EndSeq;
    } else {
      // Long prompts read better one per line.
      bool block = false;
      for (int i = 0; i < n; ++i) block = block || r->GetRepeatedString(m, f, i).size() > 40;
      if (!block) e << YAML::Flow;
      e << YAML::BeginSeq;
      for (int i = 0; i < n; ++i) yaml_scalar(e, m, f, i);
      e << YAML::EndSeq;
    }
  } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
    if (r->HasField(m, f))
      yaml_message(e, r->GetMessage(m, f));
    else
      e << YAML::Null;
  } else if (f->has_presence() && !r->HasField(m, f)) {
    e << YAML::Null;
  } else {
    yaml_scalar(e, m, f, -1);
  }
}

void yaml_message(YAML::Emitter& e, const pb::Message& m) {
  const pb::Descriptor* d = m.GetDescriptor();
  e << YAML::BeginMap;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    e << YAML::Key << f->name() << YAML::Value;
    yaml_field(e, m, f);
  }
  e << YAML::EndMap;
}

}  // namespace

std::string recipe_to_yaml(const Recipe& recipe) {
  YAML::Emitter e;
  e.SetIndent(2);
  yaml_message(e, recipe);
  std::string s = e.c_str();
  s += '\n';
  return s;
}

// Declared in recipe.cpp: the default instances the hash compares against.
const Recipe& default_recipe_instance();
const Dataset& default_dataset_instance();

std::string recipe_hash_json(const Recipe& recipe) {
  // gradient_checkpointing changes memory only (bit-identical results), so a run may resume with it toggled;
  // the parallel sizes split the same global batch differently, so a run may resume on another rank count.
  static const std::set<std::string> kSkip = {"output_dir",    "dataset_prepared_path", "resume_from_checkpoint",
                                              "num_threads",   "logging_steps",         "save_steps",
                                              "saves_per_epoch", "gradient_checkpointing",
                                              // the global batch is the same for any rank count
                                              "data_parallel_size", "expert_parallel_size"};
  // Datasets omit fields equal to a default dataset: rebuild them through a copy.
  std::string o;
  const pb::Descriptor* d = recipe.GetDescriptor();
  const Recipe& dflt = default_recipe_instance();
  o += '{';
  bool first = true;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    if (kSkip.count(f->name())) continue;
    std::string frag, dfrag;
    if (f->is_repeated() && !f->is_map() && f->message_type() == Dataset::descriptor()) {
      const auto& list = f->name() == "datasets" ? recipe.datasets() : recipe.test_datasets();
      frag += '[';
      for (int k = 0; k < list.size(); ++k) {
        if (k) frag += ',';
        json_message(list.Get(k), &default_dataset_instance(), nullptr, frag);
      }
      frag += ']';
      dfrag = "[]";
    } else {
      json_field(recipe, f, frag);
      json_field(dflt, f, dfrag);
    }
    if (frag == dfrag) continue;
    if (!first) o += ',';
    first = false;
    o += json_escape(f->name()) + ':' + frag;
  }
  o += '}';
  return o;
}

}  // namespace graft::train
