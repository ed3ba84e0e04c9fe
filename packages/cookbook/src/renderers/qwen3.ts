/**
 * @module `qwen3`: the Qwen3 chat format with `<think>` reasoning and `<tool_call>` function calls,
 * token for token what Qwen3's official chat template produces.
 */
import { BaseRenderer, parsed } from './base.js';
import {
  RendererError,
  type ContentPart,
  type Message,
  type ParsedResponse,
  type RenderContext,
  type RenderedMessage,
  type Role,
  type ToolCall,
  type ToolSpec,
  type UnparsedToolCall,
} from './types.js';

const TOOL_RESPONSE_OPEN = '<tool_response>';
const TOOL_RESPONSE_CLOSE = '</tool_response>';

/**
 * JSON as Python's `json.dumps(value, ensure_ascii=False)` writes it (`", "` and `": "` separators),
 * which is how the official template serialises tools and tool-call arguments.
 *
 * @example
 * pythonJson({ city: 'Paris', days: [1, 2] }); // '{"city": "Paris", "days": [1, 2]}'
 */
export function pythonJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${JSON.stringify(k)}: ${pythonJson(v)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

function stripNewlines(text: string, where: 'start' | 'end' | 'both'): string {
  let result = text;
  if (where !== 'end') result = result.replace(/^\n+/, '');
  if (where !== 'start') result = result.replace(/\n+$/, '');
  return result;
}

/** The text after the last `<think>`, or all of it when the tag is missing (the model may omit it). */
function afterOpenTag(text: string): string {
  const open = text.lastIndexOf('<think>');
  return open < 0 ? text : text.slice(open + '<think>'.length);
}

/** An assistant message's reasoning and visible text, read the way the official template reads them. */
function reasoningAndText(message: Message): { reasoning: string; text: string } {
  if (typeof message.content !== 'string') {
    const parts: ContentPart[] = message.content;
    return {
      reasoning: parts.map((p) => (p.type === 'thinking' ? p.thinking : '')).join(''),
      text: parts.map((p) => (p.type === 'text' ? p.text : '')).join(''),
    };
  }
  const content = message.content;
  const close = content.indexOf('</think>');
  if (close < 0) return { reasoning: '', text: content };
  const before = stripNewlines(content.slice(0, close), 'end');
  return {
    reasoning: stripNewlines(afterOpenTag(before), 'start'),
    text: stripNewlines(content.slice(content.lastIndexOf('</think>') + '</think>'.length), 'start'),
  };
}

function plainText(message: Message): string {
  if (typeof message.content === 'string') return message.content;
  return message.content.map((p) => (p.type === 'text' ? p.text : '')).join('');
}

function isToolResponse(text: string): boolean {
  return text.startsWith(TOOL_RESPONSE_OPEN) && text.endsWith(TOOL_RESPONSE_CLOSE);
}

function renderToolCall(call: ToolCall): string {
  return `<tool_call>\n{"name": "${call.function.name}", "arguments": ${call.function.arguments}}\n</tool_call>`;
}

/** Splits `<tool_call>{json}</tool_call>` blocks out of a response's text. */
function parseToolCalls(text: string): { text: string; toolCalls: ToolCall[]; unparsed: UnparsedToolCall[] } {
  const toolCalls: ToolCall[] = [];
  const unparsed: UnparsedToolCall[] = [];
  let rest = text.replace(/<tool_call>([\s\S]*?)<\/tool_call>/g, (rawText, body: string) => {
    try {
      const call = JSON.parse(body.trim()) as unknown;
      const { name, arguments: args } = (call ?? {}) as { name?: unknown; arguments?: unknown };
      if (typeof name !== 'string') throw new Error('the call has no string "name"');
      toolCalls.push({ type: 'function', function: { name, arguments: typeof args === 'string' ? args : pythonJson(args ?? {}) } });
    } catch (error) {
      unparsed.push({ rawText, error: error instanceof Error ? error.message : String(error) });
    }
    return '';
  });
  const open = rest.indexOf('<tool_call>');
  if (open >= 0) {
    unparsed.push({ rawText: rest.slice(open), error: 'the <tool_call> block is never closed' });
    rest = rest.slice(0, open);
  }
  return { text: rest.trimEnd(), toolCalls, unparsed };
}

/**
 * Qwen3 (thinking): `<|im_start|>{role}\n{content}<|im_end|>`; sampling stops at `<|im_end|>`.
 * Reasoning of the last turn is framed `<think>\n…\n</think>\n\n`; reasoning of earlier turns is
 * dropped, as the official template does (so the extension property does not hold). Tool results
 * (role `tool`) are grouped into one user turn of `<tool_response>` blocks.
 *
 * @example
 * const renderer = new Qwen3Renderer(getTokenizer('Qwen/Qwen3-8B'));
 * const { message } = renderer.parseResponse(sampledTokens);
 * // message.content: [{ type: 'thinking', thinking }, { type: 'text', text }]; message.toolCalls: [...]
 */
export class Qwen3Renderer extends BaseRenderer {
  readonly name: 'qwen3' | 'qwen3_disable_thinking' = 'qwen3';
  readonly hasExtensionProperty = false;

  protected override lastQueryIndex(messages: readonly Message[]): number {
    return messages.findLastIndex((m) => m.role === 'user' && !isToolResponse(plainText(m)));
  }

  renderMessage(message: Message, context: RenderContext): RenderedMessage {
    const newline = context.index > 0 ? '\n' : '';
    if (message.role === 'tool') {
      const opensTurn = context.previous?.role !== 'tool';
      const closesTurn = context.next?.role !== 'tool';
      const output = `\n${TOOL_RESPONSE_OPEN}\n${plainText(message)}\n${TOOL_RESPONSE_CLOSE}${closesTurn ? '<|im_end|>' : ''}`;
      return this.encodeMessage(opensTurn ? `${newline}<|im_start|>user` : '', output);
    }
    const header = `${newline}<|im_start|>${message.role}\n`;
    if (message.role !== 'assistant') {
      if (typeof message.content !== 'string' && message.content.some((p) => p.type === 'thinking')) {
        throw new RendererError(`only assistant messages can hold thinking parts; a ${message.role} message has one`);
      }
      return this.encodeMessage(header, `${plainText(message)}<|im_end|>`);
    }
    const { reasoning, text } = reasoningAndText(message);
    const inLastTurn = context.index > context.lastUserIndex;
    const withThinkBlock = inLastTurn && (context.isLast || reasoning !== '');
    let output = withThinkBlock ? `<think>\n${stripNewlines(reasoning, 'both')}\n</think>\n\n${stripNewlines(text, 'start')}` : text;
    (message.toolCalls ?? []).forEach((call, i) => {
      if (i > 0 || text !== '') output += '\n';
      output += renderToolCall(call);
    });
    return this.encodeMessage(header, `${output}<|im_end|>`);
  }

  protected override generationSuffix(role: Role, context: RenderContext): number[] {
    return this.tokenizer.encode(`${context.index > 0 ? '\n' : ''}<|im_start|>${role}\n`);
  }

  getStopSequences(): number[] {
    return [this.tokenizer.tokenId('<|im_end|>')];
  }

  /**
   * Reads a sampled response: text up to `<|im_end|>`, `<think>…</think>` into a thinking part,
   * `<tool_call>{json}</tool_call>` blocks into `toolCalls` (invalid ones into `unparsedToolCalls`).
   */
  parseResponse(tokens: readonly number[]): ParsedResponse {
    const { text: raw, termination } = this.cutAtStopToken(tokens, this.tokenizer.tokenId('<|im_end|>'));
    let reasoning = '';
    let visible = raw;
    const close = raw.indexOf('</think>');
    if (close >= 0) {
      const before = raw.slice(0, close);
      reasoning = stripNewlines(afterOpenTag(before), 'both');
      visible = stripNewlines(raw.slice(close + '</think>'.length), 'start');
    }
    const { text, toolCalls, unparsed } = parseToolCalls(visible);
    const message: Message = { role: 'assistant', content: reasoning === '' ? text : [{ type: 'thinking', thinking: reasoning }, { type: 'text', text }] };
    if (toolCalls.length > 0) message.toolCalls = toolCalls;
    if (unparsed.length > 0) message.unparsedToolCalls = unparsed;
    return parsed(message, termination);
  }

  /**
   * The system message that declares `tools`, worded as the official template words it.
   *
   * @example
   * const prefix = renderer.createConversationPrefixWithTools(
   *   [{ name: 'get_weather', description: 'Weather for a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } }],
   *   'You are helpful.',
   * );
   * renderer.buildGenerationPrompt([...prefix, { role: 'user', content: 'Weather in Paris?' }]);
   */
  override createConversationPrefixWithTools(tools: readonly ToolSpec[], systemPrompt = ''): Message[] {
    const declarations = tools
      .map((tool) => `\n${pythonJson({ type: 'function', function: { name: tool.name, description: tool.description, parameters: tool.parameters } })}`)
      .join('');
    const content =
      (systemPrompt === '' ? '' : `${systemPrompt}\n\n`) +
      '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
      `You are provided with function signatures within <tools></tools> XML tags:\n<tools>${declarations}\n</tools>\n\n` +
      'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' +
      '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';
    return [{ role: 'system', content }];
  }
}
