// The `graft` binary: parses the command line and dispatches to the registered subcommands.
// This is the only place that catches graft::Error and exits.
#include <algorithm>
#include <cstdio>
#include <exception>

#include "command.hpp"
#include "graft/error.hpp"

namespace graft::cli {
std::vector<CommandSpec>& registry() {
  static std::vector<CommandSpec> r;
  return r;
}
int& exit_code() {
  static int code = 0;
  return code;
}
}  // namespace graft::cli

int main(int argc, char** argv) {
  CLI::App app{"graft — fine-tune LoRA/QLoRA adapters on frozen quantized MoE models and serve many adapters on one base"};
  app.set_version_flag("--version", std::string("graft ") + GRAFT_VERSION);
  app.require_subcommand(1);
  auto& reg = graft::cli::registry();
  std::sort(reg.begin(), reg.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  for (auto& c : reg) c.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const graft::Error& e) {
    std::fprintf(stderr, "graft: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "graft: internal error: %s\n", e.what());
    return 2;
  }
  return graft::cli::exit_code();
}
