"""A tiny Hugging Face causal LM as it is (dict batches, ModelOutput, CausalLMLoss; extra "hf")."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import curvops

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import hf_tiny_lm  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    model, loss_fn, data = hf_tiny_lm.make()
    return model.double(), loss_fn, data


def _gradient(model, loss_fn, data):
    op = curvops.HessianOperator(model, loss_fn, data)
    return op.gradient()


def test_hessian_matches_finite_differences_of_the_gradient(problem):
    """H v ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε, an independent ground truth (error O(ε²))."""
    model, loss_fn, data = problem
    op = curvops.HessianOperator(model, loss_fn, data)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v /= v.norm()
    Hv = op.torch_matmat(v)
    eps = 1e-4
    params = op.params
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.add_(eps * d)
    g_plus = _gradient(model, loss_fn, data)
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.sub_(2 * eps * d)
    g_minus = _gradient(model, loss_fn, data)
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.add_(eps * d)
    fd = (g_plus - g_minus) / (2 * eps)
    assert float((Hv - fd).norm() / Hv.norm()) < 1e-6


def test_ggn_is_symmetric_psd_on_a_subspace(problem):
    model, loss_fn, data = problem
    op = curvops.GGNOperator(model, loss_fn, data)
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((op.shape[0], 6)))[0]
    small = V.T @ op.matmat(V)
    np.testing.assert_allclose(small, small.T, atol=1e-10 * np.abs(small).max())
    assert np.linalg.eigvalsh(small).min() > -1e-10 * np.abs(small).max()


def test_dict_batches_need_no_batch_size_fn(problem):
    model, loss_fn, data = problem
    assert curvops.GGNOperator(model, loss_fn, data).num_data == 10


def _padded_batches(lengths_per_batch, seq_lens, vocab=32, seed=3):
    """Right-padded token batches: pad id 0, attention_mask 0 and label -100 after each length."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for lengths, S in zip(lengths_per_batch, seq_lens):
        ids = torch.randint(1, vocab, (len(lengths), S), generator=gen)
        mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).long()
        ids = ids * mask
        labels = torch.where(mask.bool(), ids, -100)  # CausalLMLoss shifts them
        batches.append(({"input_ids": ids, "attention_mask": mask}, labels))
    return batches


def _pad_to(batches, S):
    """All batches as one, right-padded to length S (causal: the valid positions see no pad)."""
    ids, masks, labels = [], [], []
    for X, y in batches:
        pad = S - X["input_ids"].shape[1]
        ids.append(torch.nn.functional.pad(X["input_ids"], (0, pad)))
        masks.append(torch.nn.functional.pad(X["attention_mask"], (0, pad)))
        labels.append(torch.nn.functional.pad(y, (0, pad), value=-100))
    X = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}
    return [(X, torch.cat(labels))]


def test_padded_lm_batches_of_unequal_lengths(problem):
    """-100 labels under the default mean: the batches give the GGN and the gradient of the
    whole data in one padded batch (whose gradient is torch's own)."""
    model, loss_fn, _ = problem
    batches = _padded_batches([(8, 5, 3, 8), (6, 2, 4), (7, 7)], (8, 6, 7))
    whole = _pad_to(batches, 8)
    op = curvops.GGNOperator(model, loss_fn, batches)
    one = curvops.GGNOperator(model, loss_fn, whole)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.torch_matmat(V), one.torch_matmat(V), rtol=1e-9, atol=1e-12)
    X, y = whole[0]
    params = [p for p in model.parameters() if p.requires_grad]
    truth = torch.autograd.grad(loss_fn(model(**X).logits, y), params)
    expected = torch.cat([g.reshape(-1) for g in truth])
    torch.testing.assert_close(op.gradient(), expected, rtol=1e-9, atol=1e-12)
