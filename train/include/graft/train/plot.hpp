// A self-contained SVG line plot of the training loss (written to output_dir/loss.svg).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace graft::train {
void write_loss_plot(const std::string& path, const std::vector<std::pair<int64_t, double>>& points, const std::string& title);
}
