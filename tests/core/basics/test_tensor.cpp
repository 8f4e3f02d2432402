#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "graft/tensor.hpp"

using namespace graft;

static Tensor iota(const Dims& shape) {
  std::vector<float> v(static_cast<size_t>(shape.numel()));
  std::iota(v.begin(), v.end(), 0.0f);
  return Tensor::from_f32(shape, v);
}

TEST(Tensor, ShapeStridesAndDescribe) {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::BF16);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_EQ(t.strides(), (Dims{12, 4, 1}));
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "bf16[2, 3, 4] cpu");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  EXPECT_THROW(t.size(3), Error);
  EXPECT_THROW((void)t.data<float>(), Error);  // wrong dtype access
  EXPECT_NO_THROW((void)t.data_u16());
}

TEST(Tensor, ReshapeSliceSelectTranspose) {
  Tensor t = iota({2, 3, 4});
  Tensor r = t.reshape({6, -1});
  EXPECT_EQ(r.shape(), (Dims{6, 4}));
  EXPECT_THROW(t.reshape({5, -1}), Error);
  EXPECT_THROW(t.reshape({-1, -1}), Error);

  Tensor s = t.slice(1, 1, 3);  // [2, 2, 4]
  EXPECT_EQ(s.shape(), (Dims{2, 2, 4}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.data<float>()[0], 4.0f);
  Tensor sc = s.contiguous();
  EXPECT_TRUE(sc.is_contiguous());
  EXPECT_EQ(sc.data<float>()[8], 16.0f);  // [1,0,0] = 12 + 4
  EXPECT_THROW(t.slice(1, 2, 4), Error);

  Tensor sel = t.select(0, 1);  // [3, 4], values 12..23
  EXPECT_EQ(sel.shape(), (Dims{3, 4}));
  EXPECT_EQ(sel.data<float>()[5], 17.0f);

  Tensor tr = t.select(0, 0).transpose(0, 1).contiguous();  // [4, 3]
  EXPECT_EQ(tr.shape(), (Dims{4, 3}));
  const float* p = tr.data<float>();
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_EQ(p[1], 4.0f);
  EXPECT_EQ(p[3], 1.0f);
  EXPECT_THROW(t.transpose(0, 1).reshape({24}), Error);  // non-contiguous reshape
}

TEST(Tensor, ConvertAndClone) {
  Tensor t = Tensor::from_f32({3}, std::vector<float>{1.5f, -2.0f, 3.0f});
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  Tensor f = b.to(DType::F32);
  EXPECT_EQ(f.data<float>()[0], 1.5f);
  EXPECT_EQ(f.data<float>()[1], -2.0f);
  Tensor c = t.clone();
  c.data<float>()[0] = 9.0f;
  EXPECT_EQ(t.data<float>()[0], 1.5f);  // clone does not alias
  Tensor alias = t;
  alias.data<float>()[0] = 7.0f;
  EXPECT_EQ(t.data<float>()[0], 7.0f);  // copies are views
}

TEST(Tensor, EmptyAndInvalidShapes) {
  Tensor z = Tensor::empty({0, 5}, DType::F32);
  EXPECT_EQ(z.numel(), 0);
  EXPECT_EQ(z.nbytes(), 0u);
  EXPECT_THROW(Tensor::empty({-1, 2}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_f32({2, 2}, std::vector<float>{1, 2, 3}), Error);
  EXPECT_THROW((Dims{1, 2, 3, 4, 5, 6, 7, 8, 9}), Error);
}
