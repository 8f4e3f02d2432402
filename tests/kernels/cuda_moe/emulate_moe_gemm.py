#!/usr/bin/env python3
"""Host emulation of the index math of kernels/cuda/moe_gemm.cuh and of the plan kernels of
kernels/cuda/moe_permute.cu (no GPU needed, pure Python).

Mirrors, thread by thread, the kernel's expert search, the four tile loaders (NF4 NT / TN with the
bitsandbytes nibble order and per-64 absmax, dense NT / TN), the shared-memory layout, the
per-lane mma.sync.m16n8k16 fragment loads (PTX ISA layout for .bf16 row.col), the two-phase
K loop with alpha, and the Store / SwiGLU / SwiGLUBwd epilogues; compares with a direct
computation. Arithmetic is exact float64 (no bf16 rounding): only indexing is checked.
Run: python3 tests/kernels/cuda_moe/emulate_moe_gemm.py
"""
import math
import random

BM, BN, BK, LDS, NT = 128, 128, 32, 40, 256
CODE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0]


class Nf4:
    def __init__(self, E, rows, cols, rng):
        self.rows, self.cols = rows, cols
        per = rows * cols
        self.q = [[rng.randrange(16) for _ in range(per)] for _ in range(E)]
        self.amax = [[rng.uniform(0.5, 2.0) for _ in range(per // 64)] for _ in range(E)]
        # packed: byte j = (q[2j] << 4) | q[2j+1]  (high nibble = even element)
        self.packed = [[(q[2 * j] << 4) | q[2 * j + 1] for j in range(per // 2)] for q in self.q]

    def w(self, e, r, c):
        f = r * self.cols + c
        return CODE[self.q[e][f]] * self.amax[e][f // 64]

    def load16(self, e, flat):  # -> (8 bytes, amax), as nf4_load16
        assert flat % 16 == 0
        return self.packed[e][flat // 2: flat // 2 + 8], self.amax[e][flat // 64]


def dequant16(bytes8, amax):  # -> 16 values in element order (nf4_dequant16 + pack_bf2 lo/hi)
    out = []
    for b in bytes8:
        out += [CODE[b >> 4] * amax, CODE[b & 15] * amax]
    return out


def tile_row(epi, c, bx, ncols):
    if epi == "SwiGLU":
        nb = c >> 3
        feat = bx * 64 + (nb >> 1) * 8 + (c & 7)
        return ((ncols if nb & 1 else 0) + feat), feat < ncols
    r = bx * BN + c
    return r, r < ncols


def run_kernel(B1, epi, p):
    B2 = "DenseNT" if B1 in ("Nf4NT", "DenseNT") else "DenseTN"
    E, offs, toffs = p["E"], p["offsets"], p["tile_offsets"]
    ncols = p["ncols"]
    col_tiles = math.ceil(ncols / (64 if epi == "SwiGLU" else BN))
    n = offs[E]
    max_tiles = math.ceil(n / BM) + min(E, n)
    out = p["out"]
    for by in range(max_tiles):
        mt = by
        if mt >= toffs[E]:
            continue
        lo, hi = 0, E - 1
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if toffs[mid] <= mt:
                lo = mid
            else:
                hi = mid - 1
        e = lo
        row0 = offs[e] + (mt - toffs[e]) * BM
        row_end = offs[e + 1]
        for bx in range(col_tiles):
            nk1 = math.ceil(p["k1"] / BK)
            nk = nk1 + math.ceil(p["k2"] / BK)
            acc = {}  # (tid, mi, ni, q) -> value
            for kt in range(nk):
                As = [0.0] * (BM * LDS)
                Bs = [0.0] * (BN * LDS)
                ph1 = kt < nk1
                A = p["a1"] if ph1 else p["a2"]
                K = p["k1"] if ph1 else p["k2"]
                k0 = (kt if ph1 else kt - nk1) * BK
                kind = B1 if ph1 else B2
                for tid in range(NT):
                    for i in range(2):  # A loader + store
                        v = tid + i * NT
                        r, cv = v >> 2, v & 3
                        row, kk = row0 + r, k0 + cv * 8
                        vals = A[row][kk:kk + 8] if (row < row_end and kk < K) else [0.0] * 8
                        As[r * LDS + cv * 8: r * LDS + cv * 8 + 8] = vals
                    if kind == "Nf4NT":
                        c, half = tid >> 1, tid & 1
                        wr, valid = tile_row(epi, c, bx, ncols)
                        kk = k0 + half * 16
                        vals = [0.0] * 16
                        if valid and kk < K:
                            vals = dequant16(*p["w"].load16(e, wr * p["w"].cols + kk))
                        Bs[c * LDS + half * 16: c * LDS + half * 16 + 16] = vals
                    elif kind == "Nf4TN":
                        rr, seg = tid & 31, tid >> 5
                        kr, col = k0 + rr, bx * BN + seg * 16
                        vals = [0.0] * 16
                        if kr < K and col < ncols:
                            vals = dequant16(*p["w"].load16(e, kr * p["w"].cols + col))
                        for i in range(16):
                            Bs[(seg * 16 + i) * LDS + rr] = vals[i]
                    elif kind == "DenseNT":
                        M = p["d1"][e] if ph1 else p["d2"][e]  # [rows][K]
                        for i in range(2):
                            v = tid + i * NT
                            c, cv = v >> 2, v & 3
                            wr, valid = tile_row(epi, c, bx, ncols)
                            kk = k0 + cv * 8
                            vals = M[wr][kk:kk + 8] if (valid and kk < K) else [0.0] * 8
                            Bs[c * LDS + cv * 8: c * LDS + cv * 8 + 8] = vals
                    else:  # DenseTN, M [K][ncols]
                        M = p["d1"][e] if ph1 else p["d2"][e]
                        for i in range(2):
                            v = tid + i * NT
                            rr, cv = v & 31, v >> 5
                            kr, col = k0 + rr, bx * BN + cv * 8
                            vals = M[kr][col:col + 8] if (kr < K and col < ncols) else [0.0] * 8
                            for j in range(8):
                                Bs[(cv * 8 + j) * LDS + rr] = vals[j]
                # MMAs: per warp, fragments read by each lane exactly as the kernel does
                for warp in range(8):
                    wm, wn = warp >> 2, warp & 3
                    for ks in range(BK // 16):
                        for mi in range(4):
                            for ni in range(4):
                                Am = [[0.0] * 16 for _ in range(16)]
                                Bm = [[0.0] * 8 for _ in range(16)]  # [k][n]
                                for lane in range(32):
                                    g, cq = lane >> 2, lane & 3
                                    base = (wm * 64 + mi * 16 + g) * LDS + ks * 16 + 2 * cq
                                    regs = [As[base:base + 2], As[base + 8 * LDS: base + 8 * LDS + 2],
                                            As[base + 8: base + 10], As[base + 8 * LDS + 8: base + 8 * LDS + 10]]
                                    # PTX m16n8k16 A (row): a0,a1:(g, 2cq..) a2,a3:(g+8, 2cq..) a4,a5:(g, 2cq+8..) a6,a7:(g+8, 2cq+8..)
                                    for (rr, cc), reg in zip([(g, 2 * cq), (g + 8, 2 * cq), (g, 2 * cq + 8), (g + 8, 2 * cq + 8)], regs):
                                        Am[rr][cc], Am[rr][cc + 1] = reg
                                    bb = (wn * 32 + ni * 8 + g) * LDS + ks * 16 + 2 * cq
                                    # B (col): b0,b1:(k=2cq.., n=g) b2,b3:(k=2cq+8.., n=g)
                                    Bm[2 * cq][g], Bm[2 * cq + 1][g] = Bs[bb:bb + 2]
                                    Bm[2 * cq + 8][g], Bm[2 * cq + 9][g] = Bs[bb + 8:bb + 10]
                                for lane in range(32):
                                    g, cq = lane >> 2, lane & 3
                                    tid = warp * 32 + lane
                                    for q, (rr, cc) in enumerate([(g, 2 * cq), (g, 2 * cq + 1), (g + 8, 2 * cq), (g + 8, 2 * cq + 1)]):
                                        s = sum(Am[rr][kk] * Bm[kk][cc] for kk in range(16))
                                        acc[(tid, mi, ni, q)] = acc.get((tid, mi, ni, q), 0.0) + s
                if kt == nk1 - 1 and p["alpha1"] != 1.0:
                    for key in acc:
                        acc[key] *= p["alpha1"]
            # epilogue
            for tid in range(NT):
                warp, lane = tid >> 5, tid & 31
                wm, wn, g, cq = warp >> 2, warp & 3, lane >> 2, lane & 3
                for mi in range(4):
                    for h in range(2):
                        row = row0 + wm * 64 + mi * 16 + g + 8 * h
                        if row >= row_end:
                            continue
                        a = lambda ni, q: acc.get((tid, mi, ni, q), 0.0)
                        if epi == "SwiGLU":
                            I = ncols
                            for ni in (0, 2):
                                nb = wn * 4 + ni
                                feat = bx * 64 + (nb >> 1) * 8 + 2 * cq
                                if feat >= I:
                                    continue
                                for q in range(2):
                                    gg, uu = a(ni, 2 * h + q), a(ni + 1, 2 * h + q)
                                    out[row][feat + q] = gg / (1 + math.exp(-gg)) * uu
                                    p["aux"][row][feat + q] = gg
                                    p["aux"][row][I + feat + q] = uu
                        else:
                            for ni in range(4):
                                col = bx * BN + wn * 32 + ni * 8 + 2 * cq
                                if col >= ncols:
                                    continue
                                for q in range(2):
                                    v = a(ni, 2 * h + q)
                                    if epi == "Store":
                                        out[row][col + q] = v
                                    else:
                                        I = ncols
                                        gg, uu = p["aux"][row][col + q], p["aux"][row][I + col + q]
                                        sg = 1 / (1 + math.exp(-gg))
                                        out[row][col + q] = v * uu * sg * (1 + gg * (1 - sg))
                                        out[row][I + col + q] = v * gg * sg


def plan_of(counts):
    offs, toffs = [0], [0]
    for c in counts:
        offs.append(offs[-1] + c)
        toffs.append(toffs[-1] + (c + BM - 1) // BM)
    return offs, toffs


def check(name, got, ref):
    num = sum((g - r) ** 2 for gr, rr in zip(got, ref) for g, r in zip(gr, rr))
    den = sum(r * r for rr in ref for r in rr)
    err = math.sqrt(num / max(den, 1e-300))
    print(f"{name:40s} rel err {err:.2e} {'OK' if err < 1e-12 else 'FAIL'}")
    return err < 1e-12


def build_plan(ids, E):
    """moe_permute.cu's three kernels, thread by thread (chunk = 256 ids, 8 warps)."""
    n, C = len(ids), 256
    nc = (n + C - 1) // C
    cc = [[0] * E for _ in range(nc)]
    for b in range(nc):  # chunk_hist_kernel
        for f in range(b * C, min(n, (b + 1) * C)):
            cc[b][ids[f]] += 1
    counts = [sum(cc[b][e] for b in range(nc)) for e in range(E)]  # plan_scan_kernel
    offsets, toffs = plan_of(counts)
    for e in range(E):
        base = offsets[e]
        for b in range(nc):
            cnt = cc[b][e]
            cc[b][e] = base
            base += cnt
    order, pos = [None] * n, [None] * n
    for b in range(nc):  # plan_scatter_kernel
        wc = [[0] * E for _ in range(8)]
        keys = {}
        for t in range(C):
            f = b * C + t
            lane = t & 31
            keys[t] = ids[f] if f < n else -1 - lane
        for t in range(C):  # leader of each (warp, expert) writes the warp count
            w, lane = t >> 5, t & 31
            peers = [l for l in range(32) if keys[w * 32 + l] == keys[t]]
            if b * C + t < n and min(peers) == lane:
                wc[w][keys[t]] = len(peers)
        for t in range(C):
            f = b * C + t
            if f >= n:
                continue
            w, lane = t >> 5, t & 31
            rank = sum(1 for l in range(lane) if keys[w * 32 + l] == keys[t])
            rank += sum(wc[v][ids[f]] for v in range(w))
            p = cc[b][ids[f]] + rank
            order[p] = f
            pos[f] = p
    return order, pos, counts, offsets, toffs


def check_plan(rng):
    ok = True
    for E, n, skew in [(4, 7, False), (64, 1040, False), (256, 8000, False), (128, 1000, True), (1024, 300, False)]:
        ids = [0 if skew else rng.randrange(E) for _ in range(n)]
        order, pos, counts, offsets, toffs = build_plan(ids, E)
        ref = sorted(range(n), key=lambda f: (ids[f], f))  # cpu::moe_permute_plan order
        good = order == ref and all(order[pos[f]] == f for f in range(n)) and offsets[E] == n
        print(f"{'plan E=%d n=%d skew=%s' % (E, n, skew):40s} {'OK' if good else 'FAIL'}")
        ok &= good
    return ok


def main():
    rng = random.Random(1)
    counts = [5, 0, 130, 1]  # partial tile, empty expert, 2 tiles, single row
    E = len(counts)
    offs, toffs = plan_of(counts)
    n = offs[E]
    exp_of = [e for e in range(E) for _ in range(counts[e])]
    rnd = lambda r, c: [[rng.uniform(-1, 1) for _ in range(c)] for _ in range(r)]
    ok = True
    # 1) y = x·Wᵀ + z·Bᵀ (NF4 NT + dense NT phase 2), N = 144 (partial column tile), K = 64, r = 8
    K, N, r = 64, 144, 8
    W = Nf4(E, N, K, rng)
    x, z = rnd(n, K), rnd(n, r)
    Bl = [rnd(N, r) for _ in range(E)]
    y = [[float("nan")] * N for _ in range(n)]
    run_kernel("Nf4NT", "Store", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=N, a1=x, k1=K, w=W, d1=None,
                                      alpha1=1.0, a2=z, k2=r, d2=Bl, out=y, aux=None))
    ref = [[sum(x[p][k] * W.w(exp_of[p], o, k) for k in range(K)) + sum(z[p][j] * Bl[exp_of[p]][o][j] for j in range(r))
            for o in range(N)] for p in range(n)]
    ok &= check("Nf4NT + DenseNT, Store", y, ref)
    # 2) SwiGLU: gate_up W [2I, K], I = 80 (two column tiles, second partial)
    I = 80
    Wgu = Nf4(E, 2 * I, K, rng)
    Bgu = [rnd(2 * I, r) for _ in range(E)]
    h = [[float("nan")] * I for _ in range(n)]
    gu = [[float("nan")] * (2 * I) for _ in range(n)]
    run_kernel("Nf4NT", "SwiGLU", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=I, a1=x, k1=K, w=Wgu, d1=None,
                                       alpha1=1.0, a2=z, k2=r, d2=Bgu, out=h, aux=gu))
    gref = [[sum(x[p][k] * Wgu.w(exp_of[p], o, k) for k in range(K)) + sum(z[p][j] * Bgu[exp_of[p]][o][j] for j in range(r))
             for o in range(2 * I)] for p in range(n)]
    href = [[gref[p][i] / (1 + math.exp(-gref[p][i])) * gref[p][I + i] for i in range(I)] for p in range(n)]
    ok &= check("Nf4NT + DenseNT, SwiGLU (gu)", gu, gref)
    ok &= check("Nf4NT + DenseNT, SwiGLU (h)", h, href)
    # 3) dx = dy·W + dz·A (NF4 TN + dense TN): W [N2, K2], reduction N2 = 48, output K2 = 144
    N2, K2 = 48, 144
    W2 = Nf4(E, N2, K2, rng)
    dy, dz = rnd(n, N2), rnd(n, r)
    Al = [rnd(r, K2) for _ in range(E)]
    dx = [[float("nan")] * K2 for _ in range(n)]
    run_kernel("Nf4TN", "Store", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=K2, a1=dy, k1=N2, w=W2, d1=None,
                                      alpha1=1.0, a2=dz, k2=r, d2=Al, out=dx, aux=None))
    ref = [[sum(dy[p][o] * W2.w(exp_of[p], o, k) for o in range(N2)) + sum(dz[p][j] * Al[exp_of[p]][j][k] for j in range(r))
            for k in range(K2)] for p in range(n)]
    ok &= check("Nf4TN + DenseTN, Store", dx, ref)
    # 4) SwiGLU backward epilogue: dh = dy·Wd (Wd [H, I]), dgu from gu
    H = 32
    Wd = Nf4(E, H, I, rng)
    dyd = rnd(n, H)
    dgu = [[float("nan")] * (2 * I) for _ in range(n)]
    run_kernel("Nf4TN", "SwiGLUBwd", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=I, a1=dyd, k1=H, w=Wd, d1=None,
                                          alpha1=1.0, a2=None, k2=0, d2=None, out=dgu, aux=gref))
    ref = []
    for p in range(n):
        dh = [sum(dyd[p][o] * Wd.w(exp_of[p], o, i) for o in range(H)) for i in range(I)]
        row = [0.0] * (2 * I)
        for i in range(I):
            g, u = gref[p][i], gref[p][I + i]
            sg = 1 / (1 + math.exp(-g))
            row[i] = dh[i] * u * sg * (1 + g * (1 - sg))
            row[I + i] = dh[i] * g * sg
        ref.append(row)
    ok &= check("Nf4TN, SwiGLUBwd", dgu, ref)
    # 5) z = s·x·Aᵀ (dense NT phase 1 with alpha), A [r, K]; dz = s·dy·B (dense TN), B [N2, r]
    Az = [rnd(r, K) for _ in range(E)]
    zz = [[float("nan")] * r for _ in range(n)]
    run_kernel("DenseNT", "Store", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=r, a1=x, k1=K, w=None, d1=Az,
                                        alpha1=0.5, a2=None, k2=0, d2=None, out=zz, aux=None))
    ref = [[0.5 * sum(x[p][k] * Az[exp_of[p]][j][k] for k in range(K)) for j in range(r)] for p in range(n)]
    ok &= check("DenseNT alpha (LoRA shrink)", zz, ref)
    Bz = [rnd(N2, r) for _ in range(E)]
    dzz = [[float("nan")] * r for _ in range(n)]
    run_kernel("DenseTN", "Store", dict(E=E, offsets=offs, tile_offsets=toffs, ncols=r, a1=dy, k1=N2, w=None, d1=Bz,
                                        alpha1=2.0, a2=None, k2=0, d2=None, out=dzz, aux=None))
    ref = [[2.0 * sum(dy[p][o] * Bz[exp_of[p]][o][j] for o in range(N2)) for j in range(r)] for p in range(n)]
    ok &= check("DenseTN alpha (LoRA dz)", dzz, ref)
    ok &= check_plan(rng)
    print("ALL OK" if ok else "FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
