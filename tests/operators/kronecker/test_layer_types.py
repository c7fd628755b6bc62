"""Each layer type KFAC factors, against the dense block-diagonal GGN where KFAC is exact
(one data point, a single layer under MSE) and against its definition elsewhere."""

import pytest
import torch
from kfac_definition import hand_factors
from kfac_models import block_diagonal, rel_err
from oracles import dense_ggn
from torch import nn

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.layers import is_hf_conv1d

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


def _data(make_x, sizes=(3, 2), seed=1, out=None, model=None):
    """MSE data: inputs from make_x(B, gen), targets shaped like the model's output."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for B in sizes:
        X = make_x(B, gen)
        with torch.no_grad():
            f = model(X)
        data.append((X, torch.randn(f.shape, generator=gen, dtype=torch.float64)))
    return data


def _dense_blocks(op, model, loss_fn, data):
    params = op.params
    blocks = [[params[i] for i in b] for b in op.layout.blocks]
    return block_diagonal(dense_ggn(model, loss_fn, data, params), blocks)


def _assert_exact(op, model, loss_fn, data):
    torch.testing.assert_close(
        op.to_dense(), _dense_blocks(op, model, loss_fn, data), atol=1e-10, rtol=1e-10
    )


def _randn(*shape):
    return lambda B, gen: torch.randn(B, *shape, generator=gen, dtype=torch.float64)


SINGLE_LAYERS = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), _randn(3, 5)),
    "conv1d-grouped": (lambda: nn.Conv1d(4, 6, 2, stride=2, groups=2), _randn(4, 6)),
    "conv2d-depthwise": (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3), _randn(3, 4, 4)),
    "conv3d-grouped": (lambda: nn.Conv3d(2, 4, 2, groups=2), _randn(2, 3, 3, 3)),
    "linear-seq": (lambda: nn.Linear(3, 2), _randn(4, 3)),
}


@pytest.mark.parametrize("separate", [True, False])
@pytest.mark.parametrize("name", list(SINGLE_LAYERS))
def test_single_layer_under_mse_is_exact(name, separate):
    torch.manual_seed(0)
    build, make_x = SINGLE_LAYERS[name]
    model = nn.Sequential(build()).double()
    loss_fn = nn.MSELoss()
    data = _data(make_x, model=model)
    op = KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    assert set(op.structures.values()) == {"kronecker"}
    _assert_exact(op, model, loss_fn, data)
    ekfac = EKFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    _assert_exact(ekfac, model, loss_fn, data)


def test_grouped_conv_has_one_factor_pair_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 6, 3, padding=1, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(30, 2)
    )
    model = model.double()
    data = [(torch.randn(3, 4, 5, dtype=torch.float64), torch.randint(0, 2, (3,)))]
    op = KFACOperator(model, nn.CrossEntropyLoss(), data)
    name, G, A = op.factors[0]
    assert (name, G.shape, A.shape) == ("0", (2, 3, 3), (2, 6, 6))
    (Gh, Ah) = hand_factors(model, nn.CrossEntropyLoss(), data, {"0": model[0]})["0"]
    torch.testing.assert_close(G, Gh, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(A, Ah, atol=1e-12, rtol=1e-10)


class _Embed(nn.Module):
    def __init__(self, padding_idx=0) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3, padding_idx=padding_idx)

    def forward(self, ids):
        return self.embed(ids)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_under_mse_is_exact_with_a_diagonal_input_factor(padding_idx):
    torch.manual_seed(0)
    model = _Embed(padding_idx).double()
    data = _data(lambda B, gen: torch.randint(0, 7, (B, 4), generator=gen), model=model)
    op = KFACOperator(model, nn.MSELoss(), data)
    assert op.structures == {"embed.weight": "kronecker-diagonal-A"}
    _, G, A = op.factors[0]
    assert G.shape == (3, 3) and A.shape == (7,)  # the diagonal of A, never V x V
    _assert_exact(op, model, nn.MSELoss(), data)
    _assert_exact(EKFACOperator(model, nn.MSELoss(), data), model, nn.MSELoss(), data)
    if padding_idx is not None:
        assert float(A[padding_idx]) == 0.0
        rows = op.to_dense().reshape(7, 3, 7, 3)[padding_idx]
        assert float(rows.abs().max()) == 0.0  # padding rows get no curvature


class _FakeConv1D(nn.Module):
    """transformers' Conv1D, written out: y = x W + b with W (D_in, D_out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], self.nf
        )


_FakeConv1D.__name__ = "Conv1D"
_FakeConv1D.__module__ = "transformers.pytorch_utils"


def test_hf_conv1d_is_detected_by_name_without_transformers():
    assert is_hf_conv1d(_FakeConv1D(2, 3))
    assert not is_hf_conv1d(nn.Linear(2, 3))


@pytest.mark.parametrize("separate", [True, False])
def test_hf_conv1d_under_mse_is_exact(separate):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    for layer in (transformers.pytorch_utils.Conv1D(2, 3), _FakeConv1D(2, 3)):
        model = nn.Sequential(layer).double()
        data = _data(_randn(4, 3), model=model)
        op = KFACOperator(model, nn.MSELoss(), data, separate_weight_and_bias=separate)
        assert set(op.structures.values()) == {"kronecker"}
        _, G, A = op.factors[0]
        assert G.shape == (2, 2) and A.shape == (3 + (not separate),) * 2
        _assert_exact(op, model, nn.MSELoss(), data)


class _Attention(nn.Module):
    """Self- (q = k = v) or cross-attention (k = v, another sequence) through nn.MHA."""

    def __init__(self, cross: bool = False, **kw) -> None:
        super().__init__()
        self.cross = cross
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True, **kw)

    def forward(self, x):
        if self.cross:
            q, kv = x[:, :2], x[:, 2:]
            return self.mha(q, kv, kv, need_weights=False)[0]
        return self.mha(x, x, x, need_weights=False)[0]


def test_mha_out_proj_hooks_do_not_fire():
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    fired = []
    mha.out_proj.register_forward_hook(lambda *a: fired.append(1))
    x = torch.randn(2, 3, 4)
    with torch.enable_grad():
        mha(x, x, x)
    assert not fired  # F.multi_head_attention_forward multiplies out_proj.weight itself


@pytest.mark.parametrize("separate", [True, False])
def test_mha_in_and_out_projection_exact_for_one_point_and_one_token(separate):
    torch.manual_seed(0)
    model = _Attention().double()
    data = _data(_randn(1, 4), sizes=(1,), model=model)
    op = KFACOperator(model, nn.MSELoss(), data, separate_weight_and_bias=separate)
    assert [layer.name for layer in op.layers] == ["mha", "mha.out_proj"]
    _, G, A = op.factors[0]
    assert G.shape == (12, 12)  # packed in_proj_weight (3E, E): one block for q, k, v
    _assert_exact(op, model, nn.MSELoss(), data)


class _ExplicitAttention(nn.Module):
    """nn.MultiheadAttention written with nn.Linear projections (same numbers)."""

    def __init__(self, mha: nn.MultiheadAttention, cross: bool) -> None:
        super().__init__()
        E, self.heads, self.cross = mha.embed_dim, mha.num_heads, cross
        self.q, self.kv = nn.Linear(E, E), nn.Linear(E, 2 * E)
        self.out = nn.Linear(E, E)
        with torch.no_grad():
            self.q.weight.copy_(mha.in_proj_weight[:E])
            self.q.bias.copy_(mha.in_proj_bias[:E])
            self.kv.weight.copy_(mha.in_proj_weight[E:])
            self.kv.bias.copy_(mha.in_proj_bias[E:])
            self.out.weight.copy_(mha.out_proj.weight)
            self.out.bias.copy_(mha.out_proj.bias)

    def _heads(self, t):
        B, L, E = t.shape
        return t.reshape(B, L, self.heads, E // self.heads).transpose(1, 2)

    def forward(self, x):
        q_in, kv_in = (x[:, :2], x[:, 2:]) if self.cross else (x, x)
        q = self._heads(self.q(q_in))
        k, v = (self._heads(t) for t in self.kv(kv_in).chunk(2, dim=-1))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(att.transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1))


@pytest.mark.parametrize("cross", [False, True])
def test_mha_factors_are_those_of_explicit_linear_projections(cross):
    """in_proj's G holds the q and k, v blocks of the explicit projections (cross-attention:
    two calls on row slices, no cross terms), A their inputs' mean second moment."""
    torch.manual_seed(0)
    model = _Attention(cross).double()
    explicit = _ExplicitAttention(model.mha, cross).double()
    data = [(torch.randn(B, 5, 4, dtype=torch.float64), torch.randint(0, 4, (B,))) for B in (3, 2)]
    pool = lambda m: nn.Sequential(m, _Pool())  # noqa: E731
    loss_fn = nn.CrossEntropyLoss()
    got = {n: (G, A) for n, G, A in KFACOperator(pool(model), loss_fn, data).factors}
    ref = {n: (G, A) for n, G, A in KFACOperator(pool(explicit), loss_fn, data).factors}
    G, A = got["0.mha"]
    E = 4
    Gq, Aq = ref["0.q"]
    Gkv, Akv = ref["0.kv"]
    torch.testing.assert_close(G[:E, :E], Gq)
    torch.testing.assert_close(G[E:, E:], Gkv)
    if cross:  # two calls: q rows on 2 tokens, k / v rows on 3
        assert float(G[:E, E:].abs().max()) == 0.0
        torch.testing.assert_close(A, (2 * Aq + 3 * Akv) / 5)
    else:
        torch.testing.assert_close(A, Aq)
    torch.testing.assert_close(got["0.mha.out_proj"][0], ref["0.out"][0])
    torch.testing.assert_close(got["0.mha.out_proj"][1], ref["0.out"][1])


class _Pool(nn.Module):
    def forward(self, h):
        return h.mean(dim=1)


def test_mha_with_separate_qkv_weights_shares_the_bias_block():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, kdim=3, vdim=3, batch_first=True).double()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x[..., :4], x[..., 4:], x[..., 4:], need_weights=False)[0].mean(1)

    model = M()
    data = [(torch.randn(3, 2, 7, dtype=torch.float64), torch.randint(0, 4, (3,)))]
    op = KFACOperator(model, nn.CrossEntropyLoss(), data)
    names = {layer.name for layer in op.layers}
    qkv = {f"mha.{x}_proj_weight" for x in "qkv"}
    assert names == qkv | {"mha.in_proj_bias", "mha.out_proj"}  # one bias, three weights
    assert set(op.structures.values()) == {"kronecker"}
    e = EKFACOperator(model, nn.CrossEntropyLoss(), data)
    G = _dense_blocks(op, model, nn.CrossEntropyLoss(), data)
    for sl in op.block_slices:
        assert float(e.to_dense()[sl, sl].trace()) == pytest.approx(
            float(G[sl, sl].trace()), rel=1e-10
        )


class _HFStyleRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.3 * torch.randn(dim))

    def forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))


def _norm_model(kind: str):
    torch.manual_seed(0)
    if kind == "batchnorm":
        norm = nn.BatchNorm1d(5)
        with torch.no_grad():
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 1.5)
            norm.weight.normal_()
            norm.bias.normal_()
        return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), norm.eval(), nn.Linear(5, 2))
    norm = {
        "layernorm": lambda: nn.LayerNorm(5),
        "rmsnorm": lambda: nn.RMSNorm(5),
        "hf-rmsnorm": lambda: _HFStyleRMSNorm(5),
        "groupnorm": lambda: nn.GroupNorm(1, 5),
    }[kind]()
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), norm, nn.Linear(5, 2))


@pytest.mark.parametrize("fisher", ["type2", "empirical"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "hf-rmsnorm", "batchnorm", "groupnorm"])
def test_exact_fallback_blocks_are_the_dense_blocks(kind, fisher):
    from oracles import dense_empirical_fisher

    model = _norm_model(kind).double()
    data = [(torch.randn(B, 3, dtype=torch.float64), torch.randint(0, 2, (B,))) for B in (4, 3)]
    loss_fn = nn.CrossEntropyLoss()
    for separate in (True, False):
        op = KFACOperator(model, loss_fn, data, fisher=fisher, separate_weight_and_bias=separate)
        norm_blocks = [n for n, s in op.structures.items() if s == "exact"]
        assert norm_blocks and all(n.startswith("2.") for n in norm_blocks)
        oracle = dense_ggn if fisher == "type2" else dense_empirical_fisher
        blocks = [[op.params[i] for i in b] for b in op.layout.blocks]
        F = block_diagonal(oracle(model, loss_fn, data, op.params), blocks)
        K = op.to_dense()
        for name, sl in zip(op.block_names, op.block_slices):
            if name in norm_blocks:
                torch.testing.assert_close(K[sl, sl], F[sl, sl], atol=1e-12, rtol=1e-10)
        diag = KFACOperator(model, loss_fn, data, fisher=fisher, fallback="diagonal")
        D = diag.to_dense()
        for name, sl in zip(diag.block_names, diag.block_slices):
            if diag.structures[name] == "diagonal":
                torch.testing.assert_close(
                    D[sl, sl], torch.diag(torch.diagonal(F[sl, sl])), atol=1e-12, rtol=1e-10
                )


def test_fallback_auto_is_exact_up_to_the_size_limit_then_diagonal(monkeypatch):
    from curvops.operators.kronecker import tying

    model = _norm_model("layernorm").double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))]
    op = KFACOperator(model, nn.CrossEntropyLoss(), data, separate_weight_and_bias=False)
    assert op.structures["2.weight+2.bias"] == "exact"  # 10 entries <= EXACT_MAX
    monkeypatch.setattr(tying, "EXACT_MAX", 9)
    op = KFACOperator(model, nn.CrossEntropyLoss(), data, separate_weight_and_bias=False)
    assert op.structures["2.weight+2.bias"] == "diagonal"
    with pytest.raises(ValueError, match="fallback"):
        KFACOperator(model, nn.CrossEntropyLoss(), data, fallback="x")


def test_forward_only_has_identity_output_factors_and_unit_vector_fallback_blocks():
    from torch.func import functional_call, jacrev

    model = _norm_model("layernorm").double()
    data = [(torch.randn(B, 3, dtype=torch.float64), torch.randint(0, 2, (B,))) for B in (4, 3)]
    loss_fn = nn.CrossEntropyLoss()
    fo = KFACOperator(model, loss_fn, data, fisher="forward-only")
    t2 = KFACOperator(model, loss_fn, data)
    for (_, G, A), (_, _, A2) in zip(fo.factors, t2.factors):
        assert torch.equal(G, torch.ones_like(G))  # G = I, kept as its diagonal
        torch.testing.assert_close(A, A2)
    # LayerNorm's block: Σ_n J_nᵀ J_n / N (one position per point), J = ∂ LN(h_n) / ∂ weight
    X = torch.cat([x for x, _ in data])
    h = torch.tanh(model[0](X)).detach()
    norm = model[2]
    J = jacrev(lambda w: functional_call(norm, {"weight": w}, (h,)))(norm.weight.detach())
    expected = torch.einsum("nij,nik->jk", J, J) / X.shape[0]
    sl = fo.block_slices[fo.block_names.index("2.weight")]
    torch.testing.assert_close(fo.to_dense()[sl, sl], expected)
    ekfac = EKFACOperator(model, loss_fn, data, fisher="forward-only")
    torch.testing.assert_close(ekfac.to_dense(), fo.to_dense())  # I ⊗ A is Kronecker already
    assert rel_err(fo.to_dense(), t2.to_dense()) > 1e-2
