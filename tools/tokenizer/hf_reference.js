#!/usr/bin/env node
// Reference encodings from Hugging Face's Rust tokenizers (npm @anush008/tokenizers, tokenizers 0.22).
// Usage: node hf_reference.js CORPUS.json OUT.json NSPECIAL NAME=PATH/tokenizer.json [...]
// For each tokenizer: ids of every corpus string with add_special_tokens=false, decode of those ids
// (with and without skip_special_tokens), and ids with add_special_tokens=true for the first NSPECIAL strings.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '..', 'npm', 'node_modules', '@anush008', 'tokenizers'));

async function main() {
  const [corpusPath, outPath, nspecialStr, ...specs] = process.argv.slice(2);
  const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
  const nspecial = parseInt(nspecialStr, 10);
  const out = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const name = spec.slice(0, eq), file = spec.slice(eq + 1);
    const tok = Tokenizer.fromFile(file);
    const r = { ids: [], ids_special: [], decoded: [], decoded_skip: [] };
    for (let i = 0; i < corpus.length; ++i) {
      const enc = await tok.encode(corpus[i], null, { addSpecialTokens: false });
      const ids = Array.from(enc.getIds());
      r.ids.push(ids);
      r.decoded.push(await tok.decode(ids, false));
      if (i < nspecial) {
        const e2 = await tok.encode(corpus[i], null, { addSpecialTokens: true });
        const ids2 = Array.from(e2.getIds());
        r.ids_special.push(ids2);
        r.decoded_skip.push(await tok.decode(ids2, true));
      }
    }
    out[name] = r;
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
}
main().catch((e) => { console.error(e); process.exit(1); });
