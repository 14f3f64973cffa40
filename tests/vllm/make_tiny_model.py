"""Write a tiny, deterministic Llama checkpoint that vLLM's CPU backend can serve without downloads.

Weights are re-drawn with std ~0.2 so that K/V values are large enough for a corrupted KV block to
change greedy outputs (``load_format="dummy"`` gives KV values ~1e-6, which hides corruption).
No tokenizer is written: run vLLM with ``skip_tokenizer_init=True`` and token-id prompts.

Usage: python tests/vllm/make_tiny_model.py DIR [--seed N]   (inside .venv-vllm)
"""

from __future__ import annotations

import argparse
from pathlib import Path

WEIGHT_STD = 0.2

TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # the CPU attention backend accepts 32, 64, 80, ... 256
    vocab_size=512,
    max_position_embeddings=512,
)


def make_tiny_llama(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama (config + safetensors weights) to ``path`` and return it.

    The same seed gives byte-identical weights, so two processes that call this agree on the model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    config = LlamaConfig(
        **TINY_LLAMA,
        dtype="float32",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)  # RMSNorm weights stay at one
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * WEIGHT_STD)

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_llama(args.path, seed=args.seed))


if __name__ == "__main__":
    main()
