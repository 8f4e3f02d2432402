// Subcommand registry of the `graft` binary. Each cli/cmd_<name>.cpp registers itself:
//
//   static graft::cli::Registration reg{"tokenize", 30, [](CLI::App& app) {
//     auto* sub = app.add_subcommand("tokenize", "Encode text with a model's tokenizer");
//     ... sub->callback([...] { ... });   // throw graft::Error on failure; main prints it
//   }};
//
// `order` sorts commands in --help. Commands print results on stdout, diagnostics on stderr.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace graft::cli {

struct CommandSpec {
  std::string name;
  int order;
  std::function<void(CLI::App&)> setup;
};

std::vector<CommandSpec>& registry();

struct Registration {
  Registration(std::string name, int order, std::function<void(CLI::App&)> setup) {
    registry().push_back({std::move(name), order, std::move(setup)});
  }
};

// Exit code a command callback wants main to return (0 unless set).
int& exit_code();

}  // namespace graft::cli
