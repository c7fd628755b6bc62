"""A tiny randomly initialised Hugging Face causal LM (no download), fed with dict batches.

    curvops spectrum examples/hf_tiny_lm.py:make --k 5 --curvature ggn
    curvops spectrum examples/hf_tiny_lm.py:make --k 5 --params 'h\\.0\\.'  # block 0 only

The model is used as it is: curvops calls ``model(**X)`` for a dict X, takes the logits of
its ``ModelOutput``, and ``curvops.CausalLMLoss()`` is the next-token cross-entropy as
transformers computes it (logits[:, :-1] against labels[:, 1:], labels -100 ignored), the
labels being the input ids. Attention runs through torch's scaled_dot_product_attention,
which curvops switches to its twice-differentiable math kernel during products; the model
itself is not changed.
"""

import torch
from torch import nn

import curvops


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


def lm_batches(vocab: int = 32, seq: int = 8, sizes=(4, 4, 2), seed: int = 1):
    """(X, labels) batches: X = {"input_ids", "attention_mask"}, labels = the input ids."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for B in sizes:
        ids = torch.randint(0, vocab, (B, seq), generator=gen)
        batches.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids))
    return batches


def make():
    """The bare transformers model (in eval mode: no dropout), its loss and data."""
    return tiny_lm().eval(), curvops.CausalLMLoss(), lm_batches()


# The wrapped form that curvops needed before it took transformers models as they are; the
# tracker's Trainer test still feeds it shifted targets.
class NextTokenLogits(nn.Module):
    """Wraps a causal LM: X = {"input_ids", "attention_mask"} -> logits (B, V, S-1)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, X):
        logits = self.lm(input_ids=X["input_ids"], attention_mask=X["attention_mask"]).logits
        return logits[:, :-1].transpose(1, 2)


def token_batches(vocab: int = 32, seq: int = 8, sizes=(4, 4, 2), seed: int = 1):
    """``lm_batches`` with the targets already shifted, ids[:, 1:], for ``NextTokenLogits``."""
    return [(X, ids[:, 1:]) for X, ids in lm_batches(vocab, seq, sizes, seed)]
