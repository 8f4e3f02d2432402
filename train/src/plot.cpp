#include "graft/train/plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "graft/mmap_file.hpp"

namespace graft::train {

void write_loss_plot(const std::string& path, const std::vector<std::pair<int64_t, double>>& pts, const std::string& title) {
  const double W = 720, H = 360, L = 60, R = 20, T = 40, B = 40;
  double lo = pts.front().second, hi = lo;
  for (auto& [s, v] : pts) lo = std::min(lo, v), hi = std::max(hi, v);
  if (hi - lo < 1e-12) hi = lo + 1;
  const double s0 = static_cast<double>(pts.front().first), s1 = std::max(s0 + 1, static_cast<double>(pts.back().first));
  auto X = [&](double s) { return L + (s - s0) / (s1 - s0) * (W - L - R); };
  auto Y = [&](double v) { return T + (hi - v) / (hi - lo) * (H - T - B); };
  std::string esc;
  for (char c : title) esc += c == '&' ? std::string("&amp;") : c == '<' ? std::string("&lt;") : c == '>' ? std::string("&gt;") : std::string(1, c);
  std::string poly;
  for (auto& [s, v] : pts) poly += fmt::format("{:.1f},{:.1f} ", X(static_cast<double>(s)), Y(v));
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"14\">{3}</text>\n"
      "<line x1=\"{2}\" y1=\"{4}\" x2=\"{5}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<line x1=\"{2}\" y1=\"{6}\" x2=\"{2}\" y2=\"{4}\" stroke=\"black\"/>\n"
      "<text x=\"{2}\" y=\"{7}\">step {8}</text><text x=\"{5}\" y=\"{7}\" text-anchor=\"end\">step {9}</text>\n"
      "<text x=\"{10}\" y=\"{6}\" text-anchor=\"end\">{11:.3f}</text><text x=\"{10}\" y=\"{4}\" text-anchor=\"end\">{12:.3f}</text>\n"
      "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{13}\"/>\n</svg>\n",
      W, H, L, esc, H - B, W - R, T, H - B + 16, pts.front().first, pts.back().first, L - 4, hi, lo, poly);
  write_file_atomic(path, svg.data(), svg.size());
}

}  // namespace graft::train
