import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  getRenderer,
  getTokenizer,
  recommendedRendererName,
  RendererError,
  RENDERER_NAMES,
  type Message,
  type Renderer,
  type SupervisedExample,
  type TextTokenizer,
} from '../src/index.js';

const qwen = getTokenizer('Qwen/Qwen3-8B');
const llama = getTokenizer('meta-llama/Llama-3.2-1B-Instruct');

/** The decoded text of each maximal run of weight-1 tokens. */
function trainedSpans(tokenizer: TextTokenizer, example: SupervisedExample): string[] {
  assert.equal(example.weights.length, example.tokens.length);
  const spans: string[] = [];
  let run: number[] = [];
  example.tokens.forEach((token, i) => {
    if (example.weights[i] === 1) run.push(token);
    else {
      assert.equal(example.weights[i], 0);
      if (run.length > 0) spans.push(tokenizer.decode(run));
      run = [];
    }
  });
  if (run.length > 0) spans.push(tokenizer.decode(run));
  return spans;
}

const CHAT: Message[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: '2+2?' },
  { role: 'assistant', content: '4' },
];

test('trainOnWhat selects which outputs carry weight (qwen3)', () => {
  const renderer = getRenderer('qwen3', qwen);
  const spans = (options: Parameters<Renderer['buildSupervisedExample']>[1]) => trainedSpans(qwen, renderer.buildSupervisedExample(CHAT, options));
  // The last message is rendered as the template renders it: with an (empty) think block the model writes.
  assert.deepEqual(spans({}), ['<think>\n\n</think>\n\n4<|im_end|>']);
  assert.deepEqual(spans({ trainOnWhat: 'all_assistant_messages' }), ['Hello!<|im_end|>', '<think>\n\n</think>\n\n4<|im_end|>']);
  assert.deepEqual(spans({ trainOnWhat: 'last_assistant_turn' }), ['<think>\n\n</think>\n\n4<|im_end|>']);
  assert.deepEqual(spans({ trainOnWhat: 'all_user_and_system_messages' }), ['Be brief.<|im_end|>', 'Hi<|im_end|>', '2+2?<|im_end|>']);
  assert.equal(spans({ trainOnWhat: 'all_messages' }).length, 5);
  const allTokens = renderer.buildSupervisedExample(CHAT, { trainOnWhat: 'all_tokens' });
  assert.ok(allTokens.weights.every((w) => w === 1));
  const customized = CHAT.map((m, i) => ({ ...m, trainable: i === 2 }));
  assert.deepEqual(trainedSpans(qwen, renderer.buildSupervisedExample(customized, { trainOnWhat: 'customized' })), ['Hello!<|im_end|>']);
  assert.throws(() => renderer.buildSupervisedExample(CHAT, { trainOnWhat: 'customized' }), RendererError);
  assert.throws(() => renderer.buildSupervisedExample(customized), /only trainOnWhat 'customized'/);
});

test('buildSupervisedExamples: one example per trained message where history is rewritten, else one', () => {
  const qwen3 = getRenderer('qwen3', qwen);
  const perMessage = qwen3.buildSupervisedExamples(CHAT, { trainOnWhat: 'all_assistant_messages' });
  assert.deepEqual(
    perMessage.map((example) => trainedSpans(qwen, example)),
    [['<think>\n\n</think>\n\nHello!<|im_end|>'], ['<think>\n\n</think>\n\n4<|im_end|>']],
  );
  assert.deepEqual(perMessage[1], qwen3.buildSupervisedExample(CHAT));
  const customized = CHAT.map((m, i) => ({ ...m, trainable: i === 2 }));
  assert.equal(qwen3.buildSupervisedExamples(customized, { trainOnWhat: 'customized' }).length, 1);
  const llama3 = getRenderer('llama3', llama);
  assert.deepEqual(llama3.buildSupervisedExamples(CHAT, { trainOnWhat: 'all_assistant_messages' }), [
    llama3.buildSupervisedExample(CHAT, { trainOnWhat: 'all_assistant_messages' }),
  ]);
});

test('the last turn trains on every assistant message after the last user query (tool loop)', () => {
  const renderer = getRenderer('qwen3', qwen);
  const call = { type: 'function' as const, function: { name: 'f', arguments: '{"x": 1}' } };
  const turn: Message[] = [
    { role: 'user', content: 'Go' },
    { role: 'assistant', content: [{ type: 'thinking', thinking: 'call f' }, { type: 'text', text: '' }], toolCalls: [call] },
    { role: 'tool', content: '2' },
    { role: 'assistant', content: 'Done: 2' },
  ];
  assert.deepEqual(trainedSpans(qwen, renderer.buildSupervisedExample(turn, { trainOnWhat: 'last_assistant_turn' })), [
    '<think>\ncall f\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>',
    '<think>\n\n</think>\n\nDone: 2<|im_end|>',
  ]);
});

test('qwen3_disable_thinking prompts with an empty think block and never trains on it', () => {
  const renderer = getRenderer('qwen3_disable_thinking', qwen);
  const prompt = renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]);
  assert.equal(qwen.decode(prompt), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  const example = renderer.buildSupervisedExample([
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello!' },
  ]);
  assert.deepEqual(example.tokens.slice(0, prompt.length), prompt);
  assert.deepEqual(trainedSpans(qwen, example), ['Hello!<|im_end|>']);
  const withReasoning: Message[] = [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: [{ type: 'thinking', thinking: 'hmm' }, { type: 'text', text: 'Hello!' }] },
  ];
  assert.throws(() => renderer.buildSupervisedExample(withReasoning), /closes the think block/);
  // The thinking renderer trains on the reasoning instead.
  const thinking = getRenderer('qwen3', qwen);
  assert.deepEqual(trainedSpans(qwen, thinking.buildSupervisedExample(withReasoning)), ['<think>\nhmm\n</think>\n\nHello!<|im_end|>']);
});

test('qwen3 parses thinking, tool calls, bad tool calls and truncation', () => {
  const renderer = getRenderer('qwen3', qwen);
  const parse = (text: string) => renderer.parseResponse(qwen.encode(text));

  const answer = parse('<think>\nAdd them.\n</think>\n\n4<|im_end|>');
  assert.deepEqual(answer, {
    message: { role: 'assistant', content: [{ type: 'thinking', thinking: 'Add them.' }, { type: 'text', text: '4' }] },
    termination: 'stop_sequence',
    ok: true,
  });

  assert.deepEqual(parse('No open tag.\n</think>\n\n5<|im_end|>').message.content, [
    { type: 'thinking', thinking: 'No open tag.' },
    { type: 'text', text: '5' },
  ]);

  const calls = parse('<think>\n\n</think>\n\nChecking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>');
  assert.equal(calls.ok, true);
  assert.equal(calls.message.content, 'Checking.');
  assert.deepEqual(calls.message.toolCalls, [
    { type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } },
    { type: 'function', function: { name: 'get_time', arguments: '{}' } },
  ]);

  const bad = parse('<tool_call>\n{"name": "f", "arguments": {oops}}\n</tool_call>\n<tool_call>\n{"name": "g"<|im_end|>');
  assert.equal(bad.termination, 'stop_sequence');
  assert.equal(bad.message.toolCalls, undefined);
  assert.equal(bad.message.unparsedToolCalls?.length, 2);
  assert.match(bad.message.unparsedToolCalls?.[1]?.error ?? '', /never closed/);

  const truncated = parse('<think>\nStill thinking about');
  assert.equal(truncated.termination, 'malformed');
  assert.equal(truncated.ok, false);
  assert.equal(truncated.message.content, '<think>\nStill thinking about');

  assert.throws(() => parse('a<|im_end|>b<|im_end|>'), RendererError);
});

test('parsing the trained part of a supervised example gives the message back', () => {
  const conversations: [string, Message[]][] = [
    ['qwen3', [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: [{ type: 'thinking', thinking: 'Greet back.' }, { type: 'text', text: 'Hello!' }] }]],
    [
      'qwen3',
      [
        { role: 'user', content: 'Weather?' },
        { role: 'assistant', content: [{ type: 'thinking', thinking: 'Use the tool.' }, { type: 'text', text: 'One moment.' }], toolCalls: [{ type: 'function', function: { name: 'w', arguments: '{"city": "Oslo"}' } }] },
      ],
    ],
    ['qwen3_disable_thinking', [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }]],
    ['llama3', [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }]],
    ['role_colon', [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }]],
  ];
  for (const [name, messages] of conversations) {
    const renderer = getRenderer(name, name === 'llama3' ? llama : qwen);
    const example = renderer.buildSupervisedExample(messages);
    const trained = example.tokens.filter((_, i) => example.weights[i] === 1);
    const { message, ok } = renderer.parseResponse(trained);
    assert.equal(ok, true, name);
    assert.deepEqual(message, messages.at(-1), name);
  }
});

test('llama3 and role_colon prompts extend each other; qwen3 drops old reasoning', () => {
  const turns: Message[] = [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello!' },
    { role: 'user', content: 'Bye' },
  ];
  for (const [name, tokenizer] of [['llama3', llama], ['role_colon', llama], ['role_colon', qwen]] as const) {
    const renderer = getRenderer(name, tokenizer);
    assert.equal(renderer.hasExtensionProperty, true);
    const first = renderer.buildGenerationPrompt(turns.slice(0, 1));
    const later = renderer.buildGenerationPrompt(turns);
    assert.deepEqual(later.slice(0, first.length), first, name);
  }
  const renderer = getRenderer('qwen3', qwen);
  assert.equal(renderer.hasExtensionProperty, false);
  const withReasoning: Message[] = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: [{ type: 'thinking', thinking: 'x' }, { type: 'text', text: 'Hello!' }] }];
  assert.equal(qwen.decode(renderer.buildGenerationPrompt([...withReasoning, { role: 'user', content: 'Bye' }])).includes('<think>'), false);
});

test('role_colon: format, stop string, EOS and malformed endings', () => {
  const renderer = getRenderer('role_colon', llama);
  const prompt = renderer.buildGenerationPrompt([{ role: 'system', content: 'Be kind.' }, { role: 'user', content: 'Hi' }]);
  // Rendered piece by piece, the ids still equal those of the whole text encoded at once.
  assert.deepEqual(prompt, llama.encode('<|begin_of_text|>System: Be kind.\n\nUser: Hi\n\nAssistant:'));
  assert.deepEqual(renderer.getStopSequences(), ['\n\nUser:']);
  // The final assistant message is trained through the stop string, so the model learns to end its turn.
  const example = renderer.buildSupervisedExample([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }]);
  assert.deepEqual(trainedSpans(llama, example), [' Hello!\n\nUser:']);
  const eos = llama.tokenId('<|end_of_text|>');
  assert.deepEqual(renderer.parseResponse([...llama.encode(' Sure'), eos]), { message: { role: 'assistant', content: 'Sure' }, termination: 'eos', ok: true });
  assert.equal(renderer.parseResponse(llama.encode(' Sure\n\nUser:')).termination, 'stop_sequence');
  assert.equal(renderer.parseResponse(llama.encode(' Sure, and')).termination, 'malformed');
  assert.equal(renderer.parseResponse([...llama.encode(' a\n\nUser:'), eos]).termination, 'malformed');
  assert.equal(qwen.bosToken, undefined, 'Qwen3 has no BOS, so role_colon starts with the first message');
  assert.equal(qwen.decode(getRenderer('role_colon', qwen).buildGenerationPrompt([{ role: 'user', content: 'Hi' }])), 'User: Hi\n\nAssistant:');
});

test('llama3: stop token, parse, and formats it cannot express', () => {
  const renderer = getRenderer('llama3', llama);
  assert.deepEqual(renderer.getStopSequences(), [128009]);
  assert.deepEqual(renderer.parseResponse([...llama.encode('Hi there'), 128009]), { message: { role: 'assistant', content: 'Hi there' }, termination: 'stop_sequence', ok: true });
  assert.equal(renderer.parseResponse(llama.encode('Hi th')).ok, false);
  assert.throws(() => renderer.buildGenerationPrompt([{ role: 'assistant', content: [{ type: 'thinking', thinking: 'x' }] }]), /no format for thinking/);
  assert.throws(() => renderer.createConversationPrefixWithTools([]), /no tool-calling format/);
});

test('generation prompt prefill and other roles', () => {
  const renderer = getRenderer('qwen3', qwen);
  assert.equal(qwen.decode(renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }], { prefill: '<think>\nOK' })), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nOK');
  assert.equal(qwen.decode(renderer.buildGenerationPrompt([], { role: 'user' })), '<|im_start|>user\n');
});

test('registry and recommended renderers', () => {
  assert.deepEqual(RENDERER_NAMES, ['role_colon', 'llama3', 'qwen3', 'qwen3_disable_thinking']);
  for (const name of RENDERER_NAMES) assert.equal(getRenderer(name, qwen).name, name);
  assert.throws(() => getRenderer('chatml', qwen), /unknown renderer "chatml"; expected one of role_colon/);
  assert.equal(recommendedRendererName('Qwen/Qwen3-8B'), 'qwen3');
  assert.equal(recommendedRendererName('Qwen/Qwen3-8B-Base'), 'role_colon');
  assert.equal(recommendedRendererName('lathe/tiny-qwen3'), 'qwen3');
  assert.equal(recommendedRendererName('meta-llama/Llama-3.1-8B-Instruct'), 'llama3');
  assert.equal(recommendedRendererName('meta-llama/Llama-3.1-8B'), 'role_colon');
  assert.equal(recommendedRendererName('lathe/tiny-llama3'), 'llama3');
  assert.throws(() => recommendedRendererName('gpt2'), /no recommended renderer/);
});
