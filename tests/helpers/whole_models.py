"""Tiny whole models for the KFAC / EKFAC tests, float64, random init, eval mode.

Each builder returns (model, loss_fn, data) with unequal batches: a tiny BERT (masked LM,
padding with an attention mask, tied decoder), a tiny GPT-2 (tied embeddings and LM head),
a LLaMA-style model (torch's RMSNorm and an HF-style one, gated SiLU MLP, causal
attention), a small ResNet (BatchNorm in eval mode, depthwise and grouped convolutions)
and a Conv1d text model (padding_idx embedding). Logits come classes first (B, V, S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ = 12, 5


class ClassesFirst(nn.Module):
    """A HF masked / causal LM on dict batches -> logits (B, V, S) (or (B, V, S-1) shifted)."""

    def __init__(self, lm: nn.Module, shift: bool) -> None:
        super().__init__()
        self.lm, self.shift = lm, shift

    def forward(self, X):
        logits = self.lm(input_ids=X["input_ids"], attention_mask=X["attention_mask"]).logits
        return (logits[:, :-1] if self.shift else logits).transpose(1, 2)


def _token_batches(sizes, seed: int, pad: bool, shift: bool, ignore: bool = False):
    """Dict batches of token ids (0 = padding at the ends when ``pad``) and their labels."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for B in sizes:
        ids = torch.randint(1, VOCAB, (B, SEQ), generator=gen)
        mask = torch.ones_like(ids)
        if pad:
            lengths = torch.randint(SEQ - 2, SEQ + 1, (B,), generator=gen)
            mask = (torch.arange(SEQ) < lengths.unsqueeze(1)).long()
            ids = ids * mask
        labels = torch.randint(1, VOCAB, (B, SEQ), generator=gen)
        if ignore:
            labels = torch.where(mask.bool(), labels, torch.full_like(labels, -100))
        data.append(
            ({"input_ids": ids, "attention_mask": mask}, labels[:, 1:] if shift else labels)
        )
    return data


def tiny_bert(sizes=(3, 2), seed: int = 0, ignore: bool = False):
    """BertForMaskedLM, 1 layer, hidden 8: word / position / type embeddings, LayerNorms,
    Linear attention and MLP, the decoder tied to the word embeddings (and its bias)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=12, max_position_embeddings=8, type_vocab_size=2, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa",
    )  # fmt: skip
    model = ClassesFirst(BertForMaskedLM(config), shift=False).double().eval()
    data = _token_batches(sizes, seed + 1, pad=True, shift=False, ignore=ignore)
    return model, nn.CrossEntropyLoss(), data


def tiny_gpt2(sizes=(3, 2), seed: int = 0):
    """GPT2LMHeadModel, 1 layer, n_embd 8: transformers' Conv1D projections, LayerNorms,
    learned positions (ids (1, S) shared by the batch), lm_head tied to wte."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=8, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation="sdpa",
    )  # fmt: skip
    model = ClassesFirst(GPT2LMHeadModel(config), shift=True).double().eval()
    return model, nn.CrossEntropyLoss(), _token_batches(sizes, seed + 1, pad=False, shift=True)


class HFStyleRMSNorm(nn.Module):
    """RMSNorm as Hugging Face's LLaMA writes it (a custom module, not torch's)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden):
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.eps))


class TinyLlama(nn.Module):
    """Embedding, RMSNorm, causal attention (q, k, v, o without bias), HF-style RMSNorm,
    gated SiLU MLP, final RMSNorm, untied head: logits (B, V, S)."""

    def __init__(self, dim: int = 8, heads: int = 2, hidden: int = 12) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.norm2 = HFStyleRMSNorm(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.norm_f = nn.RMSNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def _split(self, t):
        B, S, D = t.shape
        return t.reshape(B, S, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, ids):
        h = self.embed(ids)
        x = self.norm1(h)
        q, k, v = (self._split(m(x)) for m in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(att.transpose(1, 2).reshape(h.shape))
        x = self.norm2(h)
        h = h + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(self.norm_f(h)).transpose(1, 2)


def tiny_llama(sizes=(3, 2), seed: int = 0):
    torch.manual_seed(seed)
    model = TinyLlama().double().eval()
    _randomize(model)
    data = [(X["input_ids"], y) for X, y in _token_batches(sizes, seed + 1, False, False)]
    return model, nn.CrossEntropyLoss(), data


class TinyResNet(nn.Module):
    """Stem conv + BatchNorm, a residual block (depthwise 3x3, BatchNorm, grouped 1x1),
    global average pooling, a Linear head."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pointwise = nn.Conv2d(width, width, 1, groups=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.stem(x)))
        h = h + self.pointwise(F.relu(self.bn2(self.depthwise(h))))
        return self.head(h.mean(dim=(2, 3)))


def small_resnet(sizes=(3, 2), seed: int = 0):
    torch.manual_seed(seed)
    model = TinyResNet().double().eval()
    _randomize(model)
    gen = torch.Generator().manual_seed(seed + 1)
    data = [
        (
            torch.randn(B, 2, 4, 4, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (B,), generator=gen),
        )
        for B in sizes
    ]
    return model, nn.CrossEntropyLoss(), data


class TextCNN(nn.Module):
    """Embedding (padding_idx 0) -> Conv1d -> grouped Conv1d -> mean over length -> Linear."""

    def __init__(self, dim: int = 4, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, channels, 3, padding=1)
        self.grouped = nn.Conv1d(channels, channels, 3, padding=1, groups=2)
        self.head = nn.Linear(channels, classes)

    def forward(self, ids):
        h = self.embed(ids).transpose(1, 2)
        h = torch.tanh(self.grouped(torch.tanh(self.conv(h))))
        return self.head(h.mean(dim=-1))


def conv1d_text(sizes=(3, 2), seed: int = 0):
    torch.manual_seed(seed)
    model = TextCNN().double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    data = []
    for X, _ in _token_batches(sizes, seed + 1, pad=True, shift=False):
        data.append(
            (X["input_ids"], torch.randint(0, 3, (X["input_ids"].shape[0],), generator=gen))
        )
    return model, nn.CrossEntropyLoss(), data


def _randomize(model: nn.Module) -> None:
    """Random norm weights and running statistics (not the identity they start as)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.RMSNorm, HFStyleRMSNorm, nn.LayerNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


WHOLE_MODELS = {
    "bert": tiny_bert,
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "resnet": small_resnet,
    "text_cnn": conv1d_text,
}
