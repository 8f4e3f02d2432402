#!/usr/bin/python3
# Reference inv_freq / attention_scaling for RoPE variants, transcribing transformers'
# ROPE_INIT_FUNCTIONS (default, linear, llama3, yarn) in PyTorch float32.
# Usage: rope_ref.py KIND DIM THETA [FACTOR LOW HIGH ORIG BETA_FAST BETA_SLOW MSCALE MSCALE_ALL]
# Importable: rope_init(kind, dim, base, ...) -> (attention_scaling, inv_freq tensor).
import math, sys
import torch


def rope_init(kind, dim, base, factor=1, low_ff=1, high_ff=4, orig=8192, beta_fast=32, beta_slow=1, mscale=0, mscale_all=0):
    if kind == "dynamic":  # transformers _compute_dynamic_ntk_parameters; LOW = seq_len, ORIG = max positions
        seq_len = max(low_ff, orig)
        base = base * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = 1.0
    if kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "llama3":
        low_wavelen = orig / low_ff
        high_wavelen = orig / high_ff
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, inv_freq_llama)
    elif kind == "yarn":
        def get_mscale(scale, m=1):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        scaling = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if (mscale and mscale_all) else get_mscale(factor)
        def corr_dim(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))
        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
        extrap = 1.0 / pos_freqs
        interp = 1.0 / (factor * pos_freqs)
        ef = 1 - ramp
        inv_freq = interp * (1 - ef) + extrap * ef
    return scaling, inv_freq


if __name__ == "__main__":
    kind, dim, base = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rest = [float(x) for x in sys.argv[4:]]
    args = (rest + [1, 1, 4, 8192, 32, 1, 0, 0])[:8]
    scaling, inv_freq = rope_init(kind, dim, base, *args)
    print(repr(float(scaling)))
    for v in inv_freq.tolist():
        print(repr(v))
