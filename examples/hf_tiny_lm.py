"""A tiny randomly initialised Hugging Face causal LM (no download), fed with dict batches.

    curvops spectrum examples/hf_tiny_lm.py:make --k 5 --curvature ggn

The wrapper returns next-token logits as (B, vocab, S-1) — classes on axis 1, as
nn.CrossEntropyLoss expects — and the targets are the shifted input ids. Attention runs
through torch's scaled_dot_product_attention, which curvops switches to its
twice-differentiable math kernel during products; the model itself is not changed.
"""

import torch
from torch import nn


class NextTokenLogits(nn.Module):
    """Wraps a causal LM: X = {"input_ids", "attention_mask"} -> logits (B, V, S-1)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, X):
        logits = self.lm(input_ids=X["input_ids"], attention_mask=X["attention_mask"]).logits
        return logits[:, :-1].transpose(1, 2)


def tiny_lm(vocab: int = 32, hidden: int = 16, layers: int = 1, heads: int = 2, seed: int = 0):
    """A GPT-2 architecture (learned positions: float64 end to end, unlike rotary models)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=64,
        bos_token_id=0,  # GPT-2's defaults (50256) lie outside this tiny vocabulary
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(config)


def token_batches(vocab: int = 32, seq: int = 8, sizes=(4, 4, 2), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for B in sizes:
        ids = torch.randint(0, vocab, (B, seq), generator=gen)
        X = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        batches.append((X, ids[:, 1:]))
    return batches


def make():
    model = NextTokenLogits(tiny_lm()).eval()
    return model, nn.CrossEntropyLoss(), token_batches()
