// The executables' OpenMP wait default (kernels/omp_wait/omp_wait_default.cpp): GOMP_SPINCOUNT=1000 is in the
// environment before libgomp reads it when the user set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT, and a user's
// setting is left alone. Each case runs this binary again (/proc/self/exe) with a chosen environment and reads the
// two variables as the child process saw them at its start.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "../../common/run_graft.hpp"

namespace {

// The kernel's name for this process (at most 15 characters of the file name), which the re-execution must keep.
std::string own_comm() {
  std::string comm;
  std::ifstream("/proc/self/comm") >> comm;
  return comm;
}

std::string child_report(const std::string& env) {
  return graft::testing::rerun_self_report("-u OMP_WAIT_POLICY -u GOMP_SPINCOUNT " + env,
                                           "OmpWaitDefault.DISABLED_Report");
}

}  // namespace

// Run only as the child of the tests below.
TEST(OmpWaitDefault, DISABLED_Report) {
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  // comm: the process name after the re-execution, still this binary's (not "exe").
  std::printf("REPORT spin=%s policy=%s comm=%s\n", spin ? spin : "-", policy ? policy : "-", own_comm().c_str());
}

TEST(OmpWaitDefault, SetsASpinCountWhenTheUserSetNothing) {
  EXPECT_EQ(child_report(""), "spin=1000 policy=- comm=" + own_comm());
}

TEST(OmpWaitDefault, LeavesTheUsersSettingsAlone) {
  const std::string comm = " comm=" + own_comm();
  EXPECT_EQ(child_report("GOMP_SPINCOUNT=300000"), "spin=300000 policy=-" + comm);
  EXPECT_EQ(child_report("OMP_WAIT_POLICY=active"), "spin=- policy=active" + comm);
  EXPECT_EQ(child_report("OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=7"), "spin=7 policy=passive" + comm);
}
