/**
 * Supervised fine-tuning on a conversation file with the cookbook's pipelined, resumable loop.
 *
 * Start a server and create a key (in another terminal):
 *
 *   node packages/cli/bin/lathe.js serve                      # http://127.0.0.1:8000
 *   node packages/cli/bin/lathe.js keys create --name me      # prints tml-…
 *
 * then run, from the repository root:
 *
 *   LATHE_API_KEY=tml-… node --import tsx examples/sft-conversations.ts
 *
 * `SFT_DATA` is the JSONL file (default examples/data/capitals.jsonl: `{"messages": [...]}` per
 * line), `SFT_LOG_DIR` where metrics.jsonl and checkpoints.jsonl go (default runs/sft-example; run
 * again with the same directory to resume an interrupted run), `SFT_EPOCHS` the number of epochs
 * (default 2). Ctrl-C stops after the step in flight.
 */
import { conversationDatasets, familyForModel, loadTokenizer, readConversationsJsonl, roleColonExample, trainSupervised } from '@lathe/cookbook';
import { ServiceClient } from '@lathe/sdk';

const BASE_MODEL = 'lathe/tiny-qwen3';
const data = process.env['SFT_DATA'] ?? 'examples/data/capitals.jsonl';
const logPath = process.env['SFT_LOG_DIR'] ?? 'runs/sft-example';

const { train, test } = conversationDatasets(readConversationsJsonl(data), roleColonExample(loadTokenizer(familyForModel(BASE_MODEL))), {
  batchSize: 2,
  testSize: 2,
  seed: 0,
});
const stop = new AbortController();
process.once('SIGINT', () => stop.abort());

const service = new ServiceClient(); // reads LATHE_BASE_URL and LATHE_API_KEY
try {
  const result = await trainSupervised({
    service,
    logPath,
    modelName: BASE_MODEL,
    dataset: train,
    testData: test,
    loraRank: 8,
    seed: 0,
    learningRate: 2e-2, // far above getLr(): the tiny model starts from random weights
    numEpochs: Number(process.env['SFT_EPOCHS'] ?? 2),
    saveEvery: 3,
    evalEvery: 5,
    signal: stop.signal,
  });
  console.log(
    result.interrupted
      ? `stopped after step ${result.steps - 1}; run again with SFT_LOG_DIR=${logPath} to resume`
      : `done: ${result.steps} steps; final sampler weights ${result.finalCheckpoint?.sampler_path}`,
  );
} finally {
  await service.close();
}
