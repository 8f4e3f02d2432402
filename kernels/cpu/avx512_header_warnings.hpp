// Include first in a CPU kernel file that inlines AVX-512 intrinsics: GCC 12 reports -Wmaybe-uninitialized inside its
// own AVX-512 headers (the _mm512_undefined_* / _mm256_undefined_* operands of masked builtins and of
// _mm512_reduce_add_ps's extract) when they are inlined into our kernels: a false positive of the compiler's headers,
// fatal under CI's -Werror. The pragma must precede <immintrin.h> to cover the lines it reports.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
