"""KFAC and EKFAC on whole models with default arguments: a tiny BERT, a tiny GPT-2 (tied
embeddings), a LLaMA-style model, a small ResNet (BatchNorm, depthwise convolutions) and
a Conv1d text model. Every parameter gets a block; the Kronecker factors are their
definition, the fallback blocks and EKFAC's block traces are exact (dense float64 GGN)."""

import pytest
import torch
from kfac_definition import hand_factors
from kfac_models import block_diagonal
from oracles import dense_ggn
from whole_models import WHOLE_MODELS, tiny_bert

import curvops
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")
HF = {"bert", "gpt2"}


@pytest.fixture(scope="module", params=list(WHOLE_MODELS))
def case(request):
    if request.param in HF:
        pytest.importorskip("transformers")
    model, loss_fn, data = WHOLE_MODELS[request.param]()
    kfac = KFACOperator(model, loss_fn, data)
    ekfac = EKFACOperator(model, loss_fn, data)
    blocks = [[kfac.params[i] for i in b] for b in kfac.layout.blocks]
    exact = block_diagonal(dense_ggn(model, loss_fn, data, kfac.params), blocks)
    return request.param, model, loss_fn, data, kfac, ekfac, exact


def test_every_parameter_gets_a_block_and_compare_covers_them(case):
    name, model, loss_fn, data, kfac, ekfac, _ = case
    names = {n for n, p in model.named_parameters()}
    for op in (kfac, ekfac):
        assert set(op.param_names) == names
        assert set(op.structures) == set(op.block_names)
    expected = {
        "bert": {"kronecker", "kronecker-diagonal-A", "exact"},
        "gpt2": {"kronecker", "kronecker-diagonal-A", "exact"},
        "llama": {"kronecker", "kronecker-diagonal-A", "exact"},
        "resnet": {"kronecker", "exact"},
        "text_cnn": {"kronecker", "kronecker-diagonal-A"},
    }[name]
    assert set(kfac.structures.values()) == expected
    report = curvops.compare(curvops.GGNOperator(model, loss_fn, data), [kfac, ekfac], k=3)
    for approx in report.approximations:
        assert set(approx.block_errors) == set(kfac.block_names)
        assert set(approx.structure_errors) == expected
        assert all(e >= 0 for e in approx.structure_errors.values())
    for s in {"exact"} & expected:  # the fallback blocks are the GGN's own blocks
        assert report["KFAC"].structure_errors[s] < 1e-6


def test_kronecker_factors_are_their_definition(case):
    _, model, loss_fn, data, kfac, _, _ = case
    modules = dict(model.named_modules())
    hooked = {lay.name: modules[lay.name] for lay in kfac.layers if lay.name in modules}
    assert hooked
    ref = hand_factors(model, loss_fn, data, hooked)
    for name, G, A in kfac.factors:
        if name not in ref:
            continue
        Gh, Ah = ref[name]
        scale = float(Gh.detach().abs().max())
        torch.testing.assert_close(G, Gh, atol=1e-10 * scale, rtol=1e-9, msg=f"G of {name}")
        torch.testing.assert_close(A, Ah, atol=1e-12, rtol=1e-9, msg=f"A of {name}")


def test_fallback_blocks_are_exact_and_ekfac_keeps_every_block_trace(case):
    _, _, _, _, kfac, ekfac, exact = case
    K, E = kfac.to_dense(), ekfac.to_dense()
    for name, sl in zip(kfac.block_names, kfac.block_slices):
        ref = exact[sl, sl]
        if kfac.structures[name] == "exact":
            torch.testing.assert_close(K[sl, sl], ref, atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(E[sl, sl], ref, atol=1e-12, rtol=1e-9)
        tr = float(ref.trace())
        assert float(E[sl, sl].trace()) == pytest.approx(tr, rel=1e-9, abs=1e-14), name
    assert ekfac.trace() == pytest.approx(float(exact.trace()), rel=1e-10)


def test_closed_forms_with_every_block_kind(case):
    _, _, _, _, kfac, ekfac, _ = case
    for op in (kfac, ekfac):
        K = op.to_dense()
        eye = torch.eye(K.shape[0], dtype=K.dtype)
        lam = 1e-3 * float(torch.linalg.eigvalsh(K)[-1])
        torch.testing.assert_close(
            op.inverse(lam).torch_matmat(K + lam * eye), eye, atol=1e-7, rtol=0
        )
        assert op.trace() == pytest.approx(float(K.trace()), rel=1e-10)
        assert op.frobenius_norm() == pytest.approx(float(K.norm()), rel=1e-10)
        assert op.logdet(lam) == pytest.approx(float(torch.logdet(K + lam * eye)), rel=1e-9)
        other = type(op)(*_rebuilt(case))
        other.load_state_dict(op.state_dict())
        assert torch.equal(other.to_dense(), K)


def _rebuilt(case):
    _, model, loss_fn, data, *_ = case
    return model, loss_fn, data


def _ignored_labels_supported() -> bool:
    model, loss_fn, data = tiny_bert(ignore=True)
    try:
        KFACOperator(model, loss_fn, data, params=[next(model.parameters())])
    except ValueError as err:
        if "ignore_index" in str(err):
            return False
        raise
    return True


def test_bert_with_ignored_padding_labels():
    """Labels -100 on the padding under "mean" (needs the loss-weight work in curvops.core)."""
    pytest.importorskip("transformers")
    if not _ignored_labels_supported():
        pytest.skip("KFACOperator does not accept ignore_index targets under 'mean' yet")
    model, loss_fn, data = tiny_bert(ignore=True)
    kfac = KFACOperator(model, loss_fn, data)
    blocks = [[kfac.params[i] for i in b] for b in kfac.layout.blocks]
    exact = block_diagonal(dense_ggn(model, loss_fn, data, kfac.params), blocks)
    K = kfac.to_dense()
    for name, sl in zip(kfac.block_names, kfac.block_slices):
        if kfac.structures[name] == "exact":
            torch.testing.assert_close(K[sl, sl], exact[sl, sl], atol=1e-12, rtol=1e-9)
    ekfac = EKFACOperator(model, loss_fn, data)
    assert ekfac.trace() == pytest.approx(float(exact.trace()), rel=1e-10)
