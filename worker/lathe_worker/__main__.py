"""`python -m lathe_worker --socket PATH | --port N [--models-dir DIR] [--model NAME]`"""

from __future__ import annotations

if __name__ == "__main__":
    # Before torch is imported: glibc reads its malloc settings at process start (see malloc_env.py).
    from .malloc_env import reexec_with_malloc_tuning

    reexec_with_malloc_tuning()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from .engine import Engine  # noqa: E402
from .handlers import Handlers  # noqa: E402
from .models.registry import ModelRegistry  # noqa: E402
from .server import serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lathe_worker", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="unix socket path to listen on")
    where.add_argument("--port", type=int, help="TCP port to listen on (0 picks a free one)")
    where.add_argument("--list-models", action="store_true", help="print the models this worker can load as JSON and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--models-dir", default=os.environ.get("LATHE_MODELS_DIR", ".lathe/models"))
    parser.add_argument("--model", help="load this model at start-up")
    parser.add_argument("--describe", action="append", default=[], metavar="NAME_OR_PATH",
                        help="with --list-models: also list this model (a name or folder path), named as given")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lathe-worker %(levelname)s %(message)s")
    if args.list_models:
        registry = ModelRegistry(Path(args.models_dir))
        roots = [str(registry.models_dir.resolve()), str(registry.hf_cache)]
        print(json.dumps({"models": registry.catalogue(args.describe), "roots": roots}))
        return
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    engine = Engine(ModelRegistry(Path(args.models_dir)), device=device, dtype=dtype, max_batch_tokens=args.max_batch_tokens)
    if args.model:
        engine.load_model(args.model)
    token = os.environ.get("LATHE_WORKER_TOKEN") or None
    asyncio.run(serve(Handlers(engine), args.socket, args.host, args.port, token))


if __name__ == "__main__":
    main()
