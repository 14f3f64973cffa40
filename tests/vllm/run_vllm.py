"""Run one offline vLLM (CPU) instance on token-id prompts and print one JSON line per prompt.

Run inside .venv-vllm (scripts/setup-vllm-venv.sh). The argument is a JSON object, given inline,
as ``@FILE``, or as ``-`` for standard input:

    {"model": "/tmp/tiny",                      # a directory, e.g. from make_tiny_model.py
     "prompts": [[1, 2, 3], {"prompt_token_ids": [4, 5], "cache_salt": "t1"}],
     "kv_transfer_config": {...} or "<json>",   # optional; passed to LLM(kv_transfer_config=...)
     "max_tokens": 16,                          # optional
     "rounds": 1,                               # optional: generate the same prompts N times
     "batches": [[...], [...]],                 # optional, instead of prompts/rounds: prompt lists
                                                # generated one after another in the same instance
     "llm_kwargs": {"max_num_batched_tokens": 64}}  # optional: extra/overriding LLM(...) arguments

Each result line on stdout: {"round": r, "index": i, "token_ids": [...], "num_cached_tokens": n}
(r: the round or batch; i: the prompt's index in it).
vLLM's own logs go to stderr (VLLM_LOGGING_STREAM), so stdout carries only the result lines.
"""

from __future__ import annotations

import json
import os
import sys
import time

# vLLM reads these at import time: set them before the import (callers may override).
_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process: one process per instance
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    "HF_HUB_OFFLINE": "1",  # no network here: hub probes for a local model dir otherwise cost ~12 s
}


def _load_args(raw: str) -> dict:
    if raw == "-":
        raw = sys.stdin.read()
    elif raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as f:
            raw = f.read()
    args = json.loads(raw)
    if not isinstance(args, dict) or "model" not in args or not ("prompts" in args or "batches" in args):
        raise SystemExit("run_vllm: the argument must be a JSON object with 'model' and 'prompts'")
    return args


def _prompt(p: list[int] | dict) -> dict:
    if isinstance(p, dict):
        return p
    return {"prompt_token_ids": [int(t) for t in p]}


def run(args: dict) -> list[dict]:
    """Start one LLM instance, generate greedily, and return one result dict per prompt and round."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from vllm import LLM, SamplingParams

    kv_transfer_config = args.get("kv_transfer_config")
    if isinstance(kv_transfer_config, str):
        kv_transfer_config = json.loads(kv_transfer_config)

    llm_kwargs = dict(
        model=args["model"],
        skip_tokenizer_init=True,
        dtype="float32",
        block_size=32,
        enforce_eager=True,
        enable_prefix_caching=False,
        kv_transfer_config=kv_transfer_config,
        seed=0,
    )
    llm_kwargs.update(args.get("llm_kwargs") or {})
    started = time.monotonic()
    llm = LLM(**llm_kwargs)
    ready = time.monotonic()
    params = SamplingParams(
        temperature=0,
        max_tokens=int(args.get("max_tokens", 16)),
        ignore_eos=True,
        detokenize=False,
    )
    batches = args.get("batches") or [args["prompts"]] * int(args.get("rounds", 1))
    results = []
    for rnd, batch in enumerate(batches):
        outputs = llm.generate([_prompt(p) for p in batch], params, use_tqdm=False)
        for i, out in enumerate(outputs):
            results.append(
                {
                    "round": rnd,
                    "index": i,
                    "token_ids": list(out.outputs[0].token_ids),
                    "num_cached_tokens": out.num_cached_tokens,
                }
            )
    print(
        f"run_vllm: startup {ready - started:.1f}s, generate {time.monotonic() - ready:.1f}s",
        file=sys.stderr,
    )
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for result in run(_load_args(argv[1])):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
