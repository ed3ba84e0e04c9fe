/**
 * @module The sampling playground: pick a base model or a sampler checkpoint, type a chat message,
 * see the prompt as the cookbook's renderer builds it (tokenized here in the browser, with the
 * model's own tokenizer), and the parsed reply.
 */
import { ModelInput, type SamplingClient } from '@lathe/sdk';
import { familyForModel, getRenderer, recommendedRendererName, tokenizerFromJson, type Message, type TextTokenizer, type TokenizerFamily } from '@lathe/cookbook/browser';
import { guarded, h, show } from '../dom.js';
import type { Session } from '../session.js';

const tokenizers = new Map<TokenizerFamily, Promise<TextTokenizer>>();

/** The family's tokenizer, fetched once per page load (the JSON is bundled in the build). */
function tokenizerFor(family: TokenizerFamily): Promise<TextTokenizer> {
  let found = tokenizers.get(family);
  if (!found) {
    const load = async (file: string): Promise<Record<string, unknown>> => {
      const response = await fetch(`static/tokenizers/${family}/${file}`);
      if (!response.ok) throw new Error(`cannot load the ${family} tokenizer (${file}: HTTP ${response.status})`);
      return (await response.json()) as Record<string, unknown>;
    };
    found = Promise.all([load('tokenizer.json'), load('tokenizer_config.json')]).then(([json, config]) => tokenizerFromJson(json, config, family));
    found.catch(() => tokenizers.delete(family));
    tokenizers.set(family, found);
  }
  return found;
}

/** A message's text, thinking parts marked. */
function messageText(message: Message): string {
  if (typeof message.content === 'string') return message.content;
  return message.content.map((part) => (part.type === 'thinking' ? `[thinking] ${part.thinking}\n` : part.text)).join('');
}

/** Renders the playground into `root`. */
export function playgroundPage(root: Element, session: Session): () => void {
  const status = h('p', { class: 'status' });
  const target = h('select', { name: 'target' });
  const system = h('textarea', { name: 'system', rows: 2, placeholder: 'System prompt (optional)' });
  const user = h('textarea', { name: 'message', rows: 3, placeholder: 'Your message' });
  const maxTokens = h('input', { name: 'max-tokens', type: 'number', min: 1, value: 64 });
  const temperature = h('input', { name: 'temperature', type: 'number', min: 0, step: 0.1, value: 0 });
  const prompt = h('pre', { class: 'prompt' });
  const reply = h('pre', { class: 'reply' });
  const send = h('button', { type: 'submit' }, 'Sample');
  const form = h(
    'form',
    { class: 'playground' },
    h('label', {}, 'Model ', target),
    system,
    user,
    h('label', {}, 'Max tokens ', maxTokens),
    h('label', {}, 'Temperature ', temperature),
    send,
  );
  show(root, h('h2', {}, 'Playground'), form, status, h('h3', {}, 'Rendered prompt'), prompt, h('h3', {}, 'Reply'), reply);

  const samplers = new Map<string, Promise<SamplingClient>>();
  const samplerFor = (value: string): Promise<SamplingClient> => {
    let found = samplers.get(value);
    if (!found) {
      const [kind, name] = [value.slice(0, value.indexOf(':')), value.slice(value.indexOf(':') + 1)];
      found = session.service().createSamplingClient(kind === 'base' ? { baseModel: name } : { modelPath: name });
      found.catch(() => samplers.delete(value));
      samplers.set(value, found);
    }
    return found;
  };

  void guarded(status, async () => {
    const [{ supportedModels }, { checkpoints }] = await Promise.all([session.service().getServerCapabilities(), session.rest.listUserCheckpoints({ limit: 1000 })]);
    show(
      target,
      ...supportedModels.filter((m) => m.modelName).map((m) => h('option', { value: `base:${m.modelName}` }, `${m.modelName} (base)`)),
      ...checkpoints.filter((c) => c.checkpointType === 'sampler').map((c) => h('option', { value: `path:${c.tinkerPath}` }, c.tinkerPath)),
    );
  });

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    send.disabled = true;
    reply.textContent = '';
    void guarded(status, async () => {
      if (user.value.trim() === '') throw new Error('Type a message first.');
      status.textContent = 'Loading the tokenizer…';
      const sampler = await samplerFor(target.value);
      const baseModel = await sampler.getBaseModel();
      const tokenizer = await tokenizerFor(familyForModel(baseModel));
      const renderer = getRenderer(recommendedRendererName(baseModel), tokenizer);
      const messages: Message[] = [...(system.value.trim() ? [{ role: 'system' as const, content: system.value }] : []), { role: 'user', content: user.value }];
      const tokens = renderer.buildGenerationPrompt(messages);
      prompt.textContent = tokenizer.decode(tokens);
      prompt.dataset['tokens'] = String(tokens.length);
      status.textContent = `Sampling from ${baseModel} (${renderer.name} renderer, ${tokens.length} prompt tokens)…`;
      const { sequences } = await sampler.sample({
        prompt: ModelInput.fromInts(tokens),
        numSamples: 1,
        samplingParams: { maxTokens: Number(maxTokens.value), temperature: Number(temperature.value), stop: renderer.getStopSequences() },
      });
      const sequence = sequences[0]!;
      const parsed = renderer.parseResponse(sequence.tokens);
      reply.textContent = messageText(parsed.message);
      reply.dataset['tokens'] = String(sequence.tokens.length);
      status.textContent = `${sequence.tokens.length} tokens, ${parsed.ok ? `ended at ${parsed.termination}` : 'cut off (no stop sequence)'}`;
    }).finally(() => {
      send.disabled = false;
    });
  });
  return () => {};
}
