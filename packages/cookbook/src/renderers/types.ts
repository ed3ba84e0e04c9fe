/**
 * @module The renderer contract shared by every chat format: messages in, token ids (and loss
 * weights) out, and sampled tokens back into a message.
 */
import type { TextTokenizer } from '../tokenizers.js';

/** Plain text inside a message. */
export interface TextPart {
  type: 'text';
  text: string;
}

/** A reasoning block (`<think>…</think>` in Qwen3). */
export interface ThinkingPart {
  type: 'thinking';
  thinking: string;
}

/** One piece of a message's content. */
export type ContentPart = TextPart | ThinkingPart;

/** A function call the assistant made, in the OpenAI shape; `arguments` is a JSON string. */
export interface ToolCall {
  type: 'function';
  id?: string;
  function: { name: string; arguments: string };
}

/** A tool-call block the model wrote that is not valid (bad JSON, no name, never closed). */
export interface UnparsedToolCall {
  rawText: string;
  error: string;
}

/** A tool the model may call, as declared to it (JSON-schema parameters). */
export interface ToolSpec {
  name: string;
  description: string;
  parameters: Record<string, unknown>;
}

/** Who speaks a message. `tool` carries a tool's result back to the model. */
export type Role = 'system' | 'user' | 'assistant' | 'tool';

/** One chat message. */
export interface Message {
  role: Role;
  content: string | ContentPart[];
  toolCalls?: ToolCall[];
  unparsedToolCalls?: UnparsedToolCall[];
  /** Whether the message's output is trained on; read only with `trainOnWhat: 'customized'`. */
  trainable?: boolean;
  toolCallId?: string;
  name?: string;
}

/** Which tokens of a conversation a supervised example puts loss on. */
export type TrainOnWhat =
  | 'last_assistant_message'
  | 'last_assistant_turn'
  | 'all_assistant_messages'
  | 'all_messages'
  | 'all_tokens'
  | 'all_user_and_system_messages'
  | 'customized';

/**
 * How a sampled response ended: at the renderer's stop sequence, at the tokenizer's end-of-sequence
 * token (clean only for `role_colon`), or without either (truncated: malformed).
 */
export type ParseTermination = 'stop_sequence' | 'eos' | 'malformed';

/** A sampled response read back into a message. The message is a best effort even when malformed. */
export interface ParsedResponse {
  message: Message;
  termination: ParseTermination;
  /** True when the response ended cleanly (`termination` is not `malformed`). */
  ok: boolean;
}

/**
 * A tokenized training example: what a renderer produces for one conversation. `weights[i]` is the
 * loss weight of predicting `tokens[i]` (0 for prompt tokens, 1 for tokens to learn).
 */
export interface SupervisedExample {
  tokens: number[];
  weights: number[];
}

/** One message as token chunks: `header` (role delimiters) and `output` (what the model writes, end-of-turn included). */
export interface RenderedMessage {
  header: number[];
  output: number[];
  /** Tokens appended after the final message only: the part of a stop string that overlaps the next header. */
  stopOverlap?: number[];
}

/** Where a message sits in its conversation. */
export interface RenderContext {
  index: number;
  isLast: boolean;
  previous: Message | undefined;
  next: Message | undefined;
  /** Index of the last user message (the last query), -1 when there is none. */
  lastUserIndex: number;
}

/** The names `getRenderer` accepts. */
export type RendererName = 'role_colon' | 'llama3' | 'qwen3' | 'qwen3_disable_thinking';

/** A chat format: messages ↔ tokens. */
export interface Renderer {
  readonly name: RendererName;
  readonly tokenizer: TextTokenizer;
  /**
   * True when each generation prompt of a growing conversation is a token prefix of the next one,
   * so multi-turn rollouts can be trained as one sequence.
   */
  readonly hasExtensionProperty: boolean;
  /** The prompt tokens for sampling the next message of `role` (default assistant), with optional prefill text. */
  buildGenerationPrompt(messages: readonly Message[], options?: { role?: Role; prefill?: string }): number[];
  /** Tokens of the whole conversation plus per-token loss weights (default: the last assistant message). */
  buildSupervisedExample(messages: readonly Message[], options?: { trainOnWhat?: TrainOnWhat }): SupervisedExample;
  /** Examples training each selected assistant message as it was generated (one, when prompts extend each other). */
  buildSupervisedExamples(messages: readonly Message[], options?: { trainOnWhat?: TrainOnWhat }): SupervisedExample[];
  /** Stop sequences for sampling: token ids, or strings for `role_colon`. */
  getStopSequences(): number[] | string[];
  /** Reads sampled tokens back into an assistant message. */
  parseResponse(tokens: readonly number[]): ParsedResponse;
  /** Messages (one system message) that declare `tools` to the model in this format. */
  createConversationPrefixWithTools(tools: readonly ToolSpec[], systemPrompt?: string): Message[];
}

/** A conversation the renderer cannot express, or a response sampled without the renderer's stop sequences. */
export class RendererError extends Error {
  override name = 'RendererError';
}
