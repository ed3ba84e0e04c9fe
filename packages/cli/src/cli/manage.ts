/**
 * @module `lathe runs|checkpoints|models`: managing training runs, checkpoints and models through a
 * server (a remote one, or an embedded one on a data directory).
 */
import type { Command } from 'commander';
import { checkpointsTable, deleteCheckpoint, downloadCheckpoint, exportCheckpoint, listCheckpoints } from '../commands/checkpoints.js';
import { listModels, modelsTable, pullIntoModelsDir } from '../commands/models.js';
import { formatRunDetails, listRuns, runsTable, showRun } from '../commands/runs.js';
import { DEFAULT_DATA_DIR } from '../commands/serve.js';
import { connectionOptions, parseInteger, reportFailure } from './options.js';

/** Adds `lathe runs`, `lathe checkpoints` and `lathe models` to `program`. */
export function registerManageCommands(program: Command): void {
  type ConnectionFlags = { baseUrl?: string; apiKey?: string; dataDir: string; modelsDir?: string };
  const stderrLog = (line: string): void => console.error(line);
  const print = (json: boolean, value: unknown, table: string): void => console.log(json ? JSON.stringify(value, null, 2) : table);
  const runs = program.command('runs').description("this key's training runs");
  connectionOptions(runs.command('list').description('training runs, newest first'))
    .option('--limit <n>', 'most runs to list', parseInteger('--limit', { min: 1 }), 50)
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { limit: number; json?: boolean }) => {
      await reportFailure('runs list', async () => {
        const list = await listRuns({ ...opts, log: stderrLog });
        print(opts.json === true, list, runsTable(list));
      });
    });
  connectionOptions(runs.command('show').description('one training run and its checkpoints').argument('<run-id>', 'the training run id (lathe runs list)'))
    .option('--json', 'print JSON instead of text')
    .action(async (runId: string, opts: ConnectionFlags & { json?: boolean }) => {
      await reportFailure('runs show', async () => {
        const details = await showRun({ ...opts, runId, log: stderrLog });
        print(opts.json === true, details, formatRunDetails(details));
      });
    });
  const checkpoints = program.command('checkpoints').description('list, download, export and delete checkpoints');
  connectionOptions(checkpoints.command('list').description("checkpoints of one run, or all of this key's, newest first"))
    .option('--run <run-id>', 'only this training run')
    .option('--limit <n>', 'most checkpoints to list', parseInteger('--limit', { min: 1 }), 100)
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { run?: string; limit: number; json?: boolean }) => {
      await reportFailure('checkpoints list', async () => {
        const list = await listCheckpoints({ ...opts, ...(opts.run !== undefined && { runId: opts.run }), log: stderrLog });
        print(opts.json === true, list, checkpointsTable(list));
      });
    });
  connectionOptions(checkpoints.command('download').description('download a checkpoint as a tar of its adapter (PEFT layout, Tinker tensor names)').argument('<tinker-path>', 'tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME'))
    .option('-o, --output <file.tar>', 'where to write the archive (default: a name made from the path, in the current folder)')
    .action(async (tinkerPath: string, opts: ConnectionFlags & { output?: string }) => {
      await reportFailure('checkpoints download', async () => {
        const { file, bytes } = await downloadCheckpoint({ ...opts, tinkerPath, log: stderrLog });
        console.log(`${file} (${bytes} bytes)`);
      });
    });
  connectionOptions(checkpoints.command('export').description('write a checkpoint as a PEFT adapter folder and/or a merged Hugging Face model').argument('<tinker-path>', 'the checkpoint'))
    .option('--peft <dir>', 'write the adapter here under PEFT names (loads in peft, transformers and vLLM as is)')
    .option('--merged <dir>', 'write the base model with the adapter merged in here (config.json, safetensors, tokenizer files)')
    .option('--base-model <name-or-dir>', 'the base model to merge into (default: the one the checkpoint was trained on, found in --models-dir)')
    .action(async (tinkerPath: string, opts: ConnectionFlags & { peft?: string; merged?: string; baseModel?: string }, command: Command) => {
      if (opts.peft === undefined && opts.merged === undefined) command.error('error: give --peft DIR, --merged DIR or both');
      await reportFailure('checkpoints export', async () => {
        for (const { kind, folder } of await exportCheckpoint({ ...opts, tinkerPath, log: stderrLog })) console.log(`wrote ${kind === 'peft' ? 'the PEFT adapter' : 'the merged model'} to ${folder}`);
      });
    });
  connectionOptions(checkpoints.command('delete').description('delete a checkpoint and its files').argument('<tinker-path>', 'the checkpoint'))
    .action(async (tinkerPath: string, opts: ConnectionFlags) => {
      await reportFailure('checkpoints delete', async () => {
        await deleteCheckpoint({ ...opts, tinkerPath, log: stderrLog });
        console.log(`deleted ${tinkerPath}`);
      });
    });
  const models = program.command('models').description('models to fine-tune: list them, pull one from the Hugging Face Hub');
  connectionOptions(models.command('list').description('with --base-url: what that server serves; else the built-in models, those in --models-dir and the Hugging Face cache, and the models.json aliases'))
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { json?: boolean }) => {
      await reportFailure('models list', async () => {
        const list = await listModels({ ...opts, log: stderrLog });
        print(opts.json === true, list, modelsTable(list));
      });
    });
  models
    .command('pull')
    .description('download a model from the Hugging Face Hub into the models directory (resumable: run it again after an interruption)')
    .argument('<org/name>', 'the model on the Hub, e.g. Qwen/Qwen3-0.6B')
    .option('--data-dir <dir>', 'the server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where to put it (default <data-dir>/models, where the server looks)')
    .option('--endpoint <url>', 'the Hub or a mirror (default: $HF_ENDPOINT, else https://huggingface.co)')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--token <token>', 'for gated or private models (default: $HF_TOKEN)')
    .option('--retries <n>', 'times an interrupted download is resumed before giving up', parseInteger('--retries', { min: 0 }), 5)
    .action(async (repo: string, opts: { dataDir: string; modelsDir?: string; endpoint?: string; revision: string; token?: string; retries: number }) => {
      await reportFailure('models pull', async () => {
        const result = await pullIntoModelsDir({ ...opts, repo, progress: process.stderr, log: stderrLog });
        console.log(result.alreadyPresent ? `${repo} is already in ${result.folder}` : `pulled ${repo} (${result.files} files, ${result.bytes} bytes) into ${result.folder}`);
      });
    });
}
