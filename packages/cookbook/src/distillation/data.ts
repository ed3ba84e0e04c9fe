/**
 * @module Built-in distillation data that needs no download: a target behaviour to give a teacher
 * by a few SFT steps (always answering with one catchphrase), and questions to distil it on.
 */
import type { Conversation } from '../supervised/data.js';

/** What the built-in teacher learns to say, whatever it is asked. */
export const CATCHPHRASE = 'I only talk about cats.';
/** The behaviour a built-in student also has before distillation (differing from the teacher's in one token). */
export const OTHER_CATCHPHRASE = 'I only talk about dogs.';

const TOPICS = ['rain', 'trains', 'music', 'chess', 'rivers', 'bread', 'stars', 'paint', 'glass', 'maps', 'salt', 'wind', 'clocks', 'ships', 'tea', 'snow'];

/**
 * `count` conversations (topics cycle from `offset`): a question about a topic, answered with
 * `answers[i % answers.length]` (default {@link CATCHPHRASE}). SFT on a few gives a teacher (or,
 * with both catchphrases, a student that says either); their user turns are distillation prompts.
 *
 * @example
 * catchphraseConversations(1)[0]; // [{ role: 'user', content: 'Tell me about rain.' }, { role: 'assistant', content: 'I only talk about cats.' }]
 */
export function catchphraseConversations(count = 16, offset = 0, answers: readonly string[] = [CATCHPHRASE]): Conversation[] {
  return Array.from({ length: count }, (_, i) => [
    { role: 'user', content: `Tell me about ${TOPICS[(offset + i) % TOPICS.length]!}.` },
    { role: 'assistant', content: answers[i % answers.length]! },
  ]);
}
