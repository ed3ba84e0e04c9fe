/**
 * @module Chat templates for the client commands: the renderer of a model, and JSONL messages as
 * renderer messages.
 */
import { getRenderer, getTokenizer, recommendedRendererName, type Conversation, type Message, type Renderer, type Role } from '@lathe/cookbook';

const ROLES: readonly Role[] = ['system', 'user', 'assistant', 'tool'];

/**
 * The renderer `name`, or else the one recommended for `baseModel`, over the model's tokenizer.
 *
 * @example
 * rendererFor('lathe/tiny-qwen3', undefined).name; // 'qwen3'
 */
export function rendererFor(baseModel: string, name: string | undefined): Renderer {
  return getRenderer(name ?? recommendedRendererName(baseModel), getTokenizer(baseModel));
}

/**
 * JSONL messages as renderer messages; an unknown role names the message.
 *
 * @example
 * toMessages([{ role: 'user', content: 'Hi' }]); // [{ role: 'user', content: 'Hi' }]
 */
export function toMessages(conversation: Conversation): Message[] {
  return conversation.map((message, index) => {
    if (!(ROLES as readonly string[]).includes(message.role)) {
      throw new Error(`message ${index} has role ${JSON.stringify(message.role)}; expected one of ${ROLES.join(', ')}`);
    }
    return { role: message.role as Role, content: message.content };
  });
}
