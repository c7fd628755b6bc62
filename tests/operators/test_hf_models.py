"""Hugging Face models as they are (offline, tiny, random): dict batches passed as
``model(**X)``, the logits of their ``ModelOutput``, ``curvops.CausalLMLoss`` /
``MaskedLMLoss``. Products against dense float64 truth computed on a hand-written
wrapper (the shift and transpose written out here, independently of curvops)."""

import pytest
import torch
from oracles import dense_ggn, dense_hessian
from torch import nn

import curvops
from curvops.report import build_operator

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 16, 5


def gpt2():
    """GPT-2 with tied input / output embeddings (one parameter, counted once)."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=SEQ, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def llama():
    """A LLaMA-style decoder: RMSNorm, rotary positions, grouped-query attention, SwiGLU."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def bert(head: str = "mlm"):
    """BERT (LayerNorm, GELU) as a masked LM (tied decoder) or a sequence classifier."""
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=12, max_position_embeddings=SEQ, type_vocab_size=1, num_labels=3,
    )  # fmt: skip
    if head == "mlm":
        return transformers.BertForMaskedLM(config)
    return transformers.BertForSequenceClassification(config)


def batches(kind: str, seed: int = 1):
    """Two batches of 2 sequences of SEQ tokens; the second sequence of each padded after 3
    tokens (attention_mask 0, label -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(1, VOCAB, (2, SEQ), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 3:] = 0
        X = {"input_ids": ids * mask, "attention_mask": mask}
        if kind == "causal":
            y = torch.where(mask.bool(), ids, -100)
        elif kind == "masked":
            y = torch.where(torch.rand(ids.shape, generator=gen) < 0.5, ids, -100)
            y[0, 0] = ids[0, 0]  # at least one label per batch
            y = torch.where(mask.bool(), y, -100)
        else:
            y = torch.randint(0, 3, (2,), generator=gen)
        out.append((X, y))
    return out


class Truth(nn.Module):
    """The wrapper a user used to write: logits (B, V, S') with classes on axis 1."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, X):
        out = self.model(input_ids=X["input_ids"], attention_mask=X["attention_mask"])
        logits = out["logits"] if isinstance(out, dict) else out.logits
        if self.kind == "causal":
            return logits[:, :-1].transpose(1, 2)
        return logits.transpose(1, 2) if self.kind == "masked" else logits


def truth_data(data, kind: str):
    return [(X, y[:, 1:]) for X, y in data] if kind == "causal" else data


LOSSES = {"causal": curvops.CausalLMLoss, "masked": curvops.MaskedLMLoss}
MODELS = {
    "gpt2-causal": (gpt2, "causal"),
    "llama-causal": (llama, "causal"),
    "bert-masked": (bert, "masked"),
    "bert-classifier": (lambda: bert("classifier"), "classes"),
}


# LLaMA's RMSNorm normalises in float32 even in a float64 model (transformers casts), so
# two exact routes through it (per batch / all data at once) agree to float32 round-off.
RTOL = {"llama-causal": 1e-6}


@pytest.fixture(scope="module", params=list(MODELS))
def problem(request):
    make, kind = MODELS[request.param]
    torch.manual_seed(0)
    model = make().double().eval()
    loss_fn = LOSSES[kind]() if kind in LOSSES else nn.CrossEntropyLoss()
    return model, loss_fn, batches(kind), kind, RTOL.get(request.param, 1e-10)


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """‖got − want‖ <= rtol ‖want‖ (a relative error of the whole product)."""
    error = float((got - want).norm() / want.norm())
    assert error <= rtol, f"relative error {error:.3g} > {rtol:g}"


def _columns(P: int, k: int = 3) -> torch.Tensor:
    return torch.randn(P, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _truth(problem, oracle):
    model, _, data, kind, _ = problem
    return oracle(Truth(model, kind), nn.CrossEntropyLoss(), truth_data(data, kind))


def test_ggn_products_match_the_dense_ggn(problem):
    model, loss_fn, data, _, rtol = problem
    op = curvops.GGNOperator(model, loss_fn, data)
    G = _truth(problem, dense_ggn)
    V = _columns(op.shape[0])
    assert_close(op.torch_matmat(V), G @ V, rtol)


def test_hessian_products_match_the_dense_hessian(problem):
    model, loss_fn, data, _, rtol = problem
    op = curvops.HessianOperator(model, loss_fn, data)
    H = _truth(problem, dense_hessian)
    V = _columns(op.shape[0])
    assert_close(op.torch_matmat(V), H @ V, rtol)


def test_gradient_and_forward_over_reverse_see_the_same_model(problem):
    """The functional_call paths (Hessian forward-over-reverse, GGN forward-mode J v) pass
    the dict as keywords too."""
    model, loss_fn, data, _, rtol = problem
    V = _columns(sum(p.numel() for p in model.parameters()), 2)
    one = curvops.HessianOperator(model, loss_fn, data)
    two = curvops.HessianOperator(model, loss_fn, data, hvp="forward_over_reverse")
    assert_close(two.torch_matmat(V), one.torch_matmat(V), rtol)
    forward = curvops.GGNOperator(model, loss_fn, data, jvp="forward")
    reverse = curvops.GGNOperator(model, loss_fn, data)
    assert_close(forward.torch_matmat(V), reverse.torch_matmat(V), rtol)


@pytest.mark.parametrize("kind", ["kfac", "ekfac", "ggn-empirical"])
def test_every_operator_takes_the_bare_model_as_the_wrapped_one(problem, kind):
    """The Kronecker factors and the empirical Fisher of the bare model are those of the
    hand-written wrapper: the same forward pass reaches the operators' own captures."""
    model, loss_fn, data, problem_kind, rtol = problem
    bare = build_operator(kind, model, loss_fn, data)
    wrapped = build_operator(
        kind, Truth(model, problem_kind), nn.CrossEntropyLoss(), truth_data(data, problem_kind)
    )
    V = _columns(bare.shape[0])
    assert_close(bare.torch_matmat(V), wrapped.torch_matmat(V), rtol)


def test_a_causal_lm_loss_is_the_transformers_loss():
    """CausalLMLoss on the logits equals the loss the model computes itself from labels
    (transformers computes it in float32: a float32 model)."""
    torch.manual_seed(0)
    model = gpt2().eval()
    X, y = batches("causal")[0]
    out = model(**X, labels=y)
    torch.testing.assert_close(curvops.CausalLMLoss()(out.logits, y), out.loss)


def test_params_select_a_subset_of_a_transformers_model():
    torch.manual_seed(0)
    model = llama().double().eval()
    data = batches("causal")
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]
    params = [p for n, p in model.named_parameters() if ".mlp." in n]
    op = curvops.GGNOperator(model, curvops.CausalLMLoss(), data, params=params)
    assert op.param_names == names and op.shape[0] == sum(p.numel() for p in params)
    G = dense_ggn(Truth(model, "causal"), nn.CrossEntropyLoss(), truth_data(data, "causal"), params)
    V = _columns(op.shape[0])
    assert_close(op.torch_matmat(V), G @ V, 1e-6)  # RMSNorm in float32: see RTOL


def test_lm_logits_with_a_plain_cross_entropy_name_the_lm_losses():
    torch.manual_seed(0)
    model = gpt2().double().eval()
    with pytest.raises(ValueError, match=r"a language model's logits \(B, S, V\)\? Use curvops"):
        curvops.GGNOperator(model, nn.CrossEntropyLoss(), batches("causal"))


class DictOutput(nn.Module):
    """forward(**X) -> {"logits": ...}, as a model with return_dict and no ModelOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 4), nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        h = (self.embed(input_ids) * attention_mask[..., None]).mean(1)
        return {"logits": self.head(torch.tanh(h))}


def test_a_mapping_output_gives_its_logits():
    torch.manual_seed(0)
    model = DictOutput().double()
    data = batches("classes")
    op = curvops.GGNOperator(model, nn.CrossEntropyLoss(), data)
    G = dense_ggn(Truth(model, "classes"), nn.CrossEntropyLoss(), data)
    V = _columns(op.shape[0])
    assert_close(op.torch_matmat(V), G @ V, 1e-12)
