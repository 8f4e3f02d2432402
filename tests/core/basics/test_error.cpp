#include <gtest/gtest.h>

#include "graft/error.hpp"

using graft::Error;

TEST(Error, CheckNamesExpressionFileLineAndFix) {
  int rank = 3;
  try {
    GRAFT_CHECK_FIX(rank % 2 == 0, "use an even rank", "rank {} is odd", rank);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "rank 3 is odd");
    EXPECT_NE(e.where().find("rank % 2 == 0"), std::string::npos) << e.where();
    EXPECT_NE(e.where().find("tests/core/basics/test_error.cpp:"), std::string::npos) << e.where();
    EXPECT_EQ(e.fix(), "use an even rank");
    std::string w = e.what();
    EXPECT_NE(w.find("fix: use an even rank"), std::string::npos) << w;
  }
}

TEST(Error, CheckPassesSilently) { EXPECT_NO_THROW(GRAFT_CHECK(1 + 1 == 2, "math")); }

TEST(Error, FailAlwaysThrows) {
  EXPECT_THROW(GRAFT_FAIL("", "boom {}", 1), Error);
  try {
    GRAFT_FAIL("", "boom {}", 2);
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "boom 2");
    EXPECT_EQ(e.where().find("check failed"), std::string::npos);
  }
}
