#!/usr/bin/env python3
# Host emulation (numpy, no GPU) of the lane-level index math of kernels/cuda/nf4_gemm.cuh (forward and
# backward-dX, with LoRA shrink/expand) and kernels/cuda/nf4_matmul_decode.cu, using the PTX-specified
# ldmatrix.x4 and mma.m16n8k16 fragment layouts; compares against numpy references (expect ~1e-16).
# It checks tile/fragment/permutation indexing and edge coverage (outputs start as NaN), not timing,
# cp.async synchronisation or bf16 rounding. Keep it in sync when the kernels change. Run: python3 <this> (~25 s).
# Emulates the index math of nf4_gemm.cuh (Fwd, BwdDx with LoRA) and nf4_matmul_decode.cu per lane,
# with PTX-specified ldmatrix / mma.m16n8k16 fragment layouts, against numpy references.
import numpy as np
rng = np.random.default_rng(0)
CODE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
  0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float64)
BM=BN=128; BK=64; LDS=72; LDR=72; T4=np.arange(32)&3; G=np.arange(32)>>2; LANE=np.arange(32)

def ldmatrix_x4(smem, addr):  # addr[lane] = element offset of the row start; returns regs[4][32] of (lo,hi) pairs
  regs = np.zeros((4, 32, 2))
  for i in range(4):
    rows = addr[8*i:8*i+8]
    for lane in range(32):
      r = lane >> 2; c = 2*(lane & 3)
      regs[i, lane] = smem[rows[r]+c: rows[r]+c+2]
  return regs

def mma(acc, a, b0, b1):  # acc[32][4]; a[4][32][2]; b0,b1 [32][2]
  A = np.zeros((16,16)); B = np.zeros((16,8))
  for l in range(32):
    g, t = l >> 2, l & 3
    A[g, 2*t:2*t+2] = a[0][l]; A[g+8, 2*t:2*t+2] = a[1][l]; A[g, 2*t+8:2*t+10] = a[2][l]; A[g+8, 2*t+8:2*t+10] = a[3][l]
    B[2*t:2*t+2, g] = b0[l]; B[2*t+8:2*t+10, g] = b1[l]
  C = A @ B
  for l in range(32):
    g, t = l >> 2, l & 3
    acc[l] += [C[g, 2*t], C[g, 2*t+1], C[g+8, 2*t], C[g+8, 2*t+1]]

def make_w(N, K):
  codes = rng.integers(0, 16, N*K); absmax = rng.uniform(0.5, 2, N*K//64)
  packed = (codes[0::2] << 4) | codes[1::2]
  W = (CODE[codes] * np.repeat(absmax, 64)).reshape(N, K)
  return packed.astype(np.uint8), absmax, W

def dequant32(packed, absmax, e):  # 32 elements from flattened index e (multiple of 32)
  by = packed[e//2: e//2+16]
  out = np.empty(32)
  out[0::2] = CODE[by >> 4]; out[1::2] = CODE[by & 15]
  return out * absmax[e//64]

def gemm(mode, act, M, red, nout, packed, absmax, N, K, Ld, Lu, r, scale):
  rp = (r + 15)//16*16
  out = np.full((M, nout), np.nan); shrink = np.full((M, max(r,1)), np.nan)
  for by in range((M+BM-1)//BM):
    for bx in range((nout+BN-1)//BN):
      m0, o0 = by*BM, bx*BN
      acc = np.zeros((8, 4, 4, 32, 4)); sacc = np.zeros((8, 4, 2, 32, 4))
      for kt in range((red+BK-1)//BK):
        r0 = kt*BK
        X = np.zeros(BM*LDS); Wb = np.zeros(BN*LDS); L = np.zeros(64*LDS)
        for tid in range(256):
          for i in range(4):
            c = tid + i*256; row = c >> 3; col = (c & 7)*8
            for j in range(8):
              gm, gk = m0+row, r0+col+j
              if gm < M and gk < red: X[row*LDS+col+j] = act[gm, gk]
          if mode == 'fwd': wrow, wcol = o0+(tid>>1), r0+(tid&1)*32
          else: wrow, wcol = r0+(tid>>2), o0+(tid&3)*32
          ok = wrow < N and wcol < K
          vals = dequant32(packed, absmax, wrow*K+wcol) if ok else np.zeros(32)
          if mode == 'fwd':
            Wb[(tid>>1)*LDS + (tid&1)*32: (tid>>1)*LDS + (tid&1)*32 + 32] = vals
          else:
            nl, kl = tid >> 2, (tid&3)*32
            for e in range(32): Wb[(kl+e)*LDS + nl] = vals[e]
        if r:
          if mode == 'fwd':
            for c in range(rp*8):
              j, col = c >> 3, (c&7)*8
              if j < r: L[j*LDS+col: j*LDS+col+8] = Ld[j, r0+col: r0+col+8]
          else:
            for c in range(rp*BK):
              j, nn = c // BK, c % BK
              if j < r and r0+nn < N: L[j*LDS+nn] = Ld[r0+nn, j]
        for warp in range(8):
          wm, wn = warp >> 2, warp & 3
          for ks in range(4):
            a = [ldmatrix_x4(X, (wm*64+mi*16+(LANE&15))*LDS + ks*16 + (LANE>>4)*8) for mi in range(4)]
            b = []
            for nj in range(2):
              t = ldmatrix_x4(Wb, (wn*32+nj*16+(LANE&7)+((LANE>>4)<<3))*LDS + ks*16 + ((LANE>>3)&1)*8)
              b += [(t[0], t[1]), (t[2], t[3])]
            for mi in range(4):
              for ni in range(4): mma(acc[warp, mi, ni], a[mi], *b[ni])
            if r and wn*16 < rp:
              t = ldmatrix_x4(L, (wn*16+(LANE&7)+((LANE>>4)<<3))*LDS + ks*16 + ((LANE>>3)&1)*8)
              for mi in range(4):
                mma(sacc[warp, mi, 0], a[mi], t[0], t[1]); mma(sacc[warp, mi, 1], a[mi], t[2], t[3])
      if r:
        S = np.zeros(BM*LDR); U = np.zeros(BN*LDR)
        for warp in range(8):
          wm, wn = warp >> 2, warp & 3
          if wn*16 >= rp: continue
          for mi in range(4):
            for jj in range(2):
              for l in range(32):
                g, t4 = l >> 2, l & 3
                row, col = wm*64+mi*16+g, wn*16+jj*8+2*t4
                c = sacc[warp, mi, jj, l]
                S[row*LDR+col:row*LDR+col+2] = scale*c[0:2]; S[(row+8)*LDR+col:(row+8)*LDR+col+2] = scale*c[2:4]
                if bx == 0:
                  for (rr, cc, v) in [(row, col, c[0]), (row, col+1, c[1]), (row+8, col, c[2]), (row+8, col+1, c[3])]:
                    if m0+rr < M and cc < r: shrink[m0+rr, cc] = v
        for c in range(BN*rp):
          o, j = c // rp, c % rp
          go = o0+o
          if j < r and go < nout: U[o*LDR+j] = Lu[go, j] if mode == 'fwd' else Lu[j, go]
        for warp in range(8):
          wm, wn = warp >> 2, warp & 3
          for ks in range(rp//16):
            a = [ldmatrix_x4(S, (wm*64+mi*16+(LANE&15))*LDR + ks*16 + (LANE>>4)*8) for mi in range(4)]
            for nj in range(2):
              t = ldmatrix_x4(U, (wn*32+nj*16+(LANE&7)+((LANE>>4)<<3))*LDR + ks*16 + ((LANE>>3)&1)*8)
              for mi in range(4):
                mma(acc[warp, mi, 2*nj], a[mi], t[0], t[1]); mma(acc[warp, mi, 2*nj+1], a[mi], t[2], t[3])
      for warp in range(8):
        wm, wn = warp >> 2, warp & 3
        for ni in range(4):
          for mi in range(4):
            for l in range(32):
              g, t4 = l >> 2, l & 3
              col = o0+wn*32+ni*8+2*t4
              if col >= nout: continue
              row = m0+wm*64+mi*16+g
              c = acc[warp, mi, ni, l]
              if row < M: out[row, col:col+2] = c[0:2]
              if row+8 < M: out[row+8, col:col+2] = c[2:4]
  return out, shrink

def decode(x, T, packed, absmax, N, K):
  out = np.full((T, N), np.nan)
  for bx in range((N+31)//32):
    n0 = bx*32
    red = np.zeros((8, 4, 32, 4))
    for warp in range(8):
      c = warp
      while c*128 < K:
        acc = red[warp]
        xa = np.zeros((32, 32)); xb = np.zeros((32, 32)); wq = np.zeros((4, 32, 32))
        for l in range(32):
          g, t4 = l >> 2, l & 3
          kb = c*128 + t4*32
          if kb < K:
            if g < T: xa[l] = x[g, kb:kb+32]
            if g+8 < T: xb[l] = x[g+8, kb:kb+32]
            for nt in range(4):
              n = n0+nt*8+g
              if n < N: wq[nt, l] = dequant32(packed, absmax, n*K+kb)
        for nt in range(4):
          for s in range(8):
            a = [xa[:, 4*s:4*s+2], xb[:, 4*s:4*s+2], xa[:, 4*s+2:4*s+4], xb[:, 4*s+2:4*s+4]]
            mma(acc[nt], a, wq[nt][:, 4*s:4*s+2], wq[nt][:, 4*s+2:4*s+4])
        c += 8
    for i in range(4*32*4):
      nt, ln, c = i // 128, (i//4) % 32, i % 4
      v = red[:, nt, ln, c].sum()
      t = (ln >> 2) + (8 if c >= 2 else 0); n = n0+nt*8+2*(ln&3)+(c&1)
      if t < T and n < N: out[t, n] = v
  return out

def rel(a, b): return np.linalg.norm(a-b)/np.linalg.norm(b)

M, N, K, r, s = 130, 200, 192, 8, 0.5
packed, absmax, W = make_w(N, K)
X = rng.standard_normal((M, K)); A = rng.standard_normal((r, K)); B = rng.standard_normal((N, r))
y, xa = gemm('fwd', X, M, K, N, packed, absmax, N, K, A, B, r, s)
print("fwd", rel(y, X@W.T + s*(X@A.T)@B.T), "xa", rel(xa, X@A.T))
dY = rng.standard_normal((M, N))
dx, dyb = gemm('bwd', dY, M, N, K, packed, absmax, N, K, B, A, r, s)
print("bwd", rel(dx, dY@W + s*(dY@B)@A), "dyb", rel(dyb, dY@B))
for T in (1, 3, 9, 16):
  xx = rng.standard_normal((T, 320)); p2, a2, W2 = make_w(70, 320)
  print("decode T", T, rel(decode(xx, T, p2, a2, 70, 320), xx@W2.T))
