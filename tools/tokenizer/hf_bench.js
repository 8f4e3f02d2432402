#!/usr/bin/env node
// HF tokenizers (Rust, npm @anush008/tokenizers) encode throughput on the same documents as graft's
// bench_tokenizer. Run with RAYON_NUM_THREADS=1 (and taskset) for one core.
// Usage: node hf_bench.js TEXT.json OUT.json NAME=tokenizer.json [...]
// Reports MB/s over wall time (MB_per_s) and over CPU time (MB_per_cpu_s), best run of each.
// modes: docs = encodeBatch(all documents) (one native call; per-call promise overhead excluded),
//        whole = encode(concatenation), cold = docs on a freshly loaded tokenizer (empty word cache).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '..', 'npm', 'node_modules', '@anush008', 'tokenizers'));

// Wall and CPU time (process.cpuUsage covers every thread, so the native worker is included).
async function timeit(fn, minSeconds) {
  let best = Infinity, bestCpu = Infinity, total = 0, n = 0, last;
  while (total < minSeconds || n < 3) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    last = await fn();
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    best = Math.min(best, dt);
    bestCpu = Math.min(bestCpu, (c.user + c.system) / 1e6);
    total += dt;
    ++n;
  }
  return { best, bestCpu, mean: total / n, n, last };
}

async function main() {
  const [textPath, outPath, ...specs] = process.argv.slice(2);
  const docs = JSON.parse(fs.readFileSync(textPath, 'utf8'));
  const whole = docs.join('');
  const bytes = Buffer.byteLength(whole, 'utf8');
  const out = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const name = spec.slice(0, eq), file = spec.slice(eq + 1);
    const tok = Tokenizer.fromFile(file);
    const opts = { addSpecialTokens: false };
    await tok.encodeBatch(docs, opts);  // warm-up (fills the word cache)
    const d = await timeit(async () => (await tok.encodeBatch(docs, opts)).reduce((a, e) => a + e.getLength(), 0), 2.0);
    const w = await timeit(async () => (await tok.encode(whole, null, opts)).getLength(), 2.0);
    // cold: encode on a freshly loaded tokenizer (empty word cache), loading not timed
    let coldWall = Infinity, coldCpu = Infinity;
    for (let i = 0; i < 3; ++i) {
      const fresh = Tokenizer.fromFile(file);
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      await fresh.encodeBatch(docs, opts);
      coldWall = Math.min(coldWall, Number(process.hrtime.bigint() - t0) / 1e9);
      const c = process.cpuUsage(c0);
      coldCpu = Math.min(coldCpu, (c.user + c.system) / 1e6);
    }
    out[name] = {
      bytes,
      docs: { MB_per_s: bytes / 1e6 / d.best, MB_per_cpu_s: bytes / 1e6 / d.bestCpu, tokens: d.last, runs: d.n },
      whole: { MB_per_s: bytes / 1e6 / w.best, MB_per_cpu_s: bytes / 1e6 / w.bestCpu, tokens: w.last, runs: w.n },
      cold: { MB_per_s: bytes / 1e6 / coldWall, MB_per_cpu_s: bytes / 1e6 / coldCpu },
    };
    console.error(`hf ${name}: docs ${out[name].docs.MB_per_cpu_s.toFixed(2)} MB/cpu-s, whole ${out[name].whole.MB_per_cpu_s.toFixed(2)}, cold ${out[name].cold.MB_per_cpu_s.toFixed(2)}`);
  }
  fs.writeFileSync(outPath, JSON.stringify(out, null, 1));
}
main().catch((e) => { console.error(e); process.exit(1); });
