// Drives `graft serve` with the official OpenAI Node.js client (tools/npm/node_modules/openai).
// Usage: node openai_client.cjs OPENAI_MODULE_DIR BASE_URL API_KEY BASE_MODEL ADAPTER
// Prints one line per check and "ALL OK" at the end; exits 1 on the first failure.
'use strict';
const [openaiDir, baseURL, apiKey, baseModel, adapter] = process.argv.slice(2);
const { OpenAI } = require(openaiDir);

function check(cond, what, extra) {
  if (!cond) {
    console.log('FAIL ' + what + (extra !== undefined ? ' ' + JSON.stringify(extra) : ''));
    process.exit(1);
  }
  console.log('ok   ' + what);
}

async function expectError(what, fn, status, code) {
  try {
    await fn();
  } catch (e) {
    check(e instanceof OpenAI.APIError, what + ': an APIError', String(e));
    check(e.status === status, what + ': status ' + status, e.status);
    if (code) check(e.code === code, what + ': code ' + code, e.error);
    check(typeof e.message === 'string' && e.message.length > 0, what + ': has a message');
    return e;
  }
  check(false, what + ': should have failed');
}

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20000 });

  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids.includes(baseModel) && ids.includes(adapter), 'models.list has base and adapter', ids);
  const card = models.data.find((m) => m.id === adapter);
  check(card.parent === baseModel && typeof card.root === 'string', 'adapter card: parent = base, root = path', card);

  const chat = await client.chat.completions.create({
    model: adapter, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0,
  });
  check(chat.object === 'chat.completion', 'chat: object');
  check(typeof chat.choices[0].message.content === 'string', 'chat: content');
  check(['stop', 'length'].includes(chat.choices[0].finish_reason), 'chat: finish_reason', chat.choices[0]);
  check(chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens && chat.usage.completion_tokens <= 8,
        'chat: usage', chat.usage);

  const cmpl = await client.completions.create({ model: baseModel, prompt: 'abc', max_tokens: 6, temperature: 0 });
  check(cmpl.object === 'text_completion' && typeof cmpl.choices[0].text === 'string', 'completions: text');
  const again = await client.completions.create({ model: baseModel, prompt: 'abc', max_tokens: 6, temperature: 0 });
  check(again.choices[0].text === cmpl.choices[0].text, 'completions: greedy is deterministic');

  // Streaming chat with usage: the deltas add up to the plain answer.
  const stream = await client.chat.completions.create({
    model: adapter, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let text = '', role = null, finish = null, usage = null, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    if (!ch.choices.length) continue;
    const d = ch.choices[0].delta;
    if (d.role) role = d.role;
    if (d.content) text += d.content;
    if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
  }
  check(role === 'assistant', 'chat stream: role');
  check(text === chat.choices[0].message.content, 'chat stream: same text as plain', { text, plain: chat.choices[0].message.content });
  check(finish === chat.choices[0].finish_reason, 'chat stream: finish_reason');
  check(usage && usage.completion_tokens === chat.usage.completion_tokens, 'chat stream: include_usage', usage);

  const cs = await client.completions.create({ model: baseModel, prompt: 'abc', max_tokens: 6, temperature: 0, stream: true });
  let ctext = '';
  for await (const ch of cs) if (ch.choices.length) ctext += ch.choices[0].text;
  check(ctext === cmpl.choices[0].text, 'completions stream: same text as plain');

  // Logprobs through the client's types.
  const lp = await client.completions.create({ model: baseModel, prompt: 'abc', max_tokens: 2, temperature: 0, logprobs: 2, echo: true });
  check(lp.choices[0].text.startsWith('abc') && lp.choices[0].logprobs.tokens.length === 3 + lp.usage.completion_tokens &&
        lp.choices[0].logprobs.token_logprobs[0] === null, 'completions: echo + logprobs', lp.choices[0].logprobs);
  const clp = await client.chat.completions.create({
    model: baseModel, messages: [{ role: 'user', content: 'x' }], max_tokens: 2, logprobs: true, top_logprobs: 3,
  });
  check(clp.choices[0].logprobs.content.length >= 1 && clp.choices[0].logprobs.content[0].top_logprobs.length === 3,
        'chat: logprobs + top_logprobs');

  // Errors arrive as the client's typed errors.
  await expectError('unknown model', () => client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 }), 404, 'model_not_found');
  await expectError('bad temperature', () => client.completions.create({ model: baseModel, prompt: 'x', temperature: -1 }), 400);
  await expectError('bad max_tokens', () => client.chat.completions.create({ model: baseModel, messages: [{ role: 'user', content: 'x' }], max_tokens: 'many' }), 400);
  await expectError('context too long', () => client.completions.create({ model: baseModel, prompt: 'x', max_tokens: 10000000 }), 400, 'context_length_exceeded');
  const bad = new OpenAI({ baseURL, apiKey: 'sk-wrong', maxRetries: 0, timeout: 20000 });
  await expectError('wrong API key', () => bad.models.list(), 401, 'invalid_api_key');
  await expectError('wrong API key (chat)', () => bad.chat.completions.create({ model: baseModel, messages: [{ role: 'user', content: 'x' }] }), 401);
  console.log('ALL OK');
}

main().catch((e) => {
  console.log('FAIL exception: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
