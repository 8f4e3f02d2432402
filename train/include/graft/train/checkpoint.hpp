// Training checkpoints: one HDF5 file holding everything a bit-exact resume needs.
//
// Layout (HDF5's oldest file format: readable by every HDF5 1.8+ tool):
//   /                      attributes  format = "graft-checkpoint", format_version = 1, step (int64)
//   /tensors/<name>        one dataset per tensor, its shape and dtype (f32/f64/i64/i32/u8 ...),
//                          Fletcher-32 checksummed; '/' in a name nests groups ("lora/<key>/A")
//   /strings/<name>        scalar fixed-length string datasets (rng state, recipe text, recipe hash, graft version)
//   /ints                  attributes: name -> int64 (data cursor, epoch, schedule state)
//   /reals                 attributes: name -> float64
// save_checkpoint builds the file image in memory (HDF5 core driver: HDF5 never sees a disk error, so a
// full disk cannot leave a half-closed HDF5 handle behind; costs one copy of the checkpoint in memory),
// writes it to a temp file in the same directory, fsyncs it, renames it over PATH and fsyncs the
// directory: a crash leaves the old file or the new one, never half of one; on any failure (unwritable
// directory, disk full) the temp file is removed and graft::Error names PATH. load_checkpoint validates
// everything it reads and names the file in every error.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "graft/tensor.hpp"

namespace graft::train {

struct Checkpoint {
  int64_t step = 0;
  std::map<std::string, Tensor> tensors;      // "lora/<key>/A", "adam_m/<key>/A", ... host tensors
  std::map<std::string, std::string> strings;  // rng state, recipe text, recipe hash, graft version
  std::map<std::string, int64_t> ints;         // data cursor, epoch, schedule state
  std::map<std::string, double> reals;
};

inline constexpr const char* kCheckpointFormat = "graft-checkpoint";
inline constexpr int64_t kCheckpointFormatVersion = 1;

void save_checkpoint(const std::string& path, const Checkpoint& ck);
Checkpoint load_checkpoint(const std::string& path);

// Removes the temp files an interrupted save_checkpoint left in `dir` (".NAME.h5.tmp.XXXXXX": a process
// killed between writing and renaming) and returns their paths, sorted. The trainer calls it when it
// starts, before it writes anything, so every such file is another run's; nothing else is touched.
std::vector<std::string> remove_stale_checkpoint_temps(const std::string& dir);

}  // namespace graft::train
