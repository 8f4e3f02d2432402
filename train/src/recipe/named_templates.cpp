// Axolotl's named chat templates (chat_template: llama3, qwen3, ...), written for graft. Each renders
// system / user / assistant conversations exactly like the model family's official template (the
// tests compare qwen3, qwen_25, llama3 and deepseek_v3 with the real tokenizers' templates); tool
// calls are left to the tokenizer's own template (chat_template: tokenizer_default).
#include <map>

#include "graft/train/chat_templates.hpp"

namespace graft::train {
namespace {

constexpr const char* kChatml = R"J({%- for m in messages %}
    {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %})J";

constexpr const char* kQwen25 = R"J({%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if not (loop.first and m.role == 'system') %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %})J";

// Qwen3: reasoning (<think>...</think> in the content, or reasoning_content) is kept only for the
// assistant turns after the last user turn; the last one always carries a (possibly empty) think block.
constexpr const char* kQwen3 = R"J({%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_user=messages|length - 1, found=false) %}
{%- for m in messages[::-1] %}
    {%- if not ns.found and m.role == 'user' %}
        {%- set ns.found = true %}
        {%- set ns.last_user = (messages|length - 1) - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for m in messages %}
    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- elif m.role == 'assistant' %}
        {%- set answer = m.content %}
        {%- set thought = '' %}
        {%- if m.reasoning_content is defined and m.reasoning_content is not none %}
            {%- set thought = m.reasoning_content %}
        {%- elif '</think>' in m.content %}
            {%- set answer = m.content.split('</think>')[-1].lstrip('\n') %}
            {%- set thought = m.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_user and (loop.last or thought) %}
            {{- '<|im_start|>assistant\n<think>\n' + thought.strip('\n') + '\n</think>\n\n' + answer.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + answer }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %})J";

constexpr const char* kLlama3 = R"J({%- for m in messages %}
    {%- if loop.first %}
        {{- bos_token }}
    {%- endif %}
    {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %})J";

constexpr const char* kLlama4 = R"J({{- bos_token }}
{%- for m in messages %}
    {{- '<|header_start|>' + m.role + '<|header_end|>\n\n' + m.content | trim + '<|eot|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|header_start|>assistant<|header_end|>\n\n' }}
{%- endif %})J";

constexpr const char* kDeepseekV2 = R"J({{- bos_token }}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {{- 'User: ' + m.content + '\n\n' }}
    {%- elif m.role == 'assistant' %}
        {{- 'Assistant: ' + m.content + eos_token }}
    {%- elif m.role == 'system' %}
        {{- m.content + '\n\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'Assistant:' }}
{%- endif %})J";

// DeepSeek-V3 (and V2.5): every system turn is joined into one prefix after the BOS.
constexpr const char* kDeepseekV3 = R"J({%- set ns = namespace(system='', first=true) %}
{%- for m in messages %}
    {%- if m.role == 'system' %}
        {%- if ns.first %}
            {%- set ns.system = m.content %}
            {%- set ns.first = false %}
        {%- else %}
            {%- set ns.system = ns.system + '\n\n' + m.content %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{{- bos_token + ns.system }}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {{- '<｜User｜>' + m.content }}
    {%- elif m.role == 'assistant' %}
        {{- '<｜Assistant｜>' + m.content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜>' }}
{%- endif %})J";

const std::map<std::string, const char*>& table() {
  static const std::map<std::string, const char*> t = {
      {"chatml", kChatml},   {"qwen_25", kQwen25},         {"qwen3", kQwen3},           {"llama3", kLlama3},
      {"llama4", kLlama4},   {"deepseek_v2", kDeepseekV2}, {"deepseek_v3", kDeepseekV3},
  };
  return t;
}

}  // namespace

const std::vector<std::string>& named_chat_template_names() {
  static const std::vector<std::string> n = {"chatml", "qwen_25", "qwen3", "llama3", "llama4", "deepseek_v2", "deepseek_v3"};
  return n;
}

std::string named_chat_template_source(const std::string& name) {
  auto it = table().find(name);
  return it == table().end() ? std::string() : std::string(it->second);
}

}  // namespace graft::train
