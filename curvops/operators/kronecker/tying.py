"""Which block each trainable parameter gets, from the layers that use it (weight tying).

A parameter's uses are the calls of the Kronecker layers owning it (``layers.roles_of``):
  - one geometry over all of them (a module called several times, a weight shared by
    modules of one kind): one Kronecker block, G and A summed over the uses — "expand"
    over uses, each use counting as further positions (Eschenhagen et al. 2023);
  - uses of different geometries, e.g. an nn.Embedding tied with an nn.Linear head (GPT-2's
    ``lm_head.weight is wte.weight``): the embedding multiplies Wᵀ with one-hot tokens, the
    head W with hidden states, so per use the block is diag(counts) ⊗ G_emb and G_head ⊗
    A_head in the same (V, D) layout — a sum of two Kronecker products, which is none, with
    no Kronecker inverse or eigenbasis. Such a parameter gets a fallback block: its exact
    curvature block over all its uses (cross terms included), or the diagonal;
  - no Kronecker layer (norm layers, custom modules): a fallback block from the calls of
    the modules owning it (per-example vector-Jacobian products).
Weight and bias share one block (joint) or one G (separate) when every use pairs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from curvops.operators.kronecker.hooks import Sites, Use
from curvops.operators.kronecker.layers import KRONECKER_LAYERS, Role, roles_of, site_kind

EXACT_MAX = 2048  # "auto": an exact fallback block up to this many entries, else diagonal


@dataclass(eq=False)
class Layer:
    """A Kronecker block owner: its weight and / or bias (layout indices) and geometry."""

    name: str
    role: Role
    weight_param: torch.Tensor | None
    bias_param: torch.Tensor | None
    joint: bool
    weight: int | None = None
    bias: int | None = None

    @property
    def in_dim(self) -> int:
        """D₁ of A per group (+1 when the bias joins the weight)."""
        return self.role.cols + int(self.joint)

    @property
    def out_dim(self) -> int:
        """D₂, all groups."""
        if self.weight_param is not None:
            return self.role.rows
        assert self.bias_param is not None
        return self.bias_param.numel()

    @property
    def groups(self) -> int:
        return self.role.groups

    @property
    def embedding(self) -> bool:
        return self.role.kind == "embedding"


@dataclass(eq=False)
class Fallback:
    """A fallback block: its parameters, "exact" or "diagonal", and why it is one."""

    name: str
    params: list[torch.Tensor]
    mode: str
    reason: str
    indices: tuple[int, ...] = ()

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class Plan:
    """Layers, fallback blocks, what to hook, and the blocks in the operator's order."""

    layers: list[Layer]
    fallbacks: list[Fallback]
    sites: Sites
    blocks: list[list[torch.Tensor]] = field(default_factory=list)
    structures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._weight = {
            id(x.weight_param): i for i, x in enumerate(self.layers) if x.weight_param is not None
        }
        self._bias = {
            id(x.bias_param): i for i, x in enumerate(self.layers) if x.bias_param is not None
        }
        self._fallback = {id(p): j for j, fb in enumerate(self.fallbacks) for p in fb.params}

    def layer_targets(self, use: Use) -> list[tuple[int, slice, bool]]:
        """(layer index, rows of its G, whether the use feeds its A) per layer it feeds; a
        paired bias shares its weight's G (counted once)."""
        out = []
        for pid, rows in use.rows.items():
            if pid in self._weight:
                out.append((self._weight[pid], rows, True))
            elif pid in self._bias:
                i = self._bias[pid]
                weight = self.layers[i].weight_param
                if weight is None or id(weight) not in use.rows:
                    out.append((i, rows, False))
        return out

    def fallback_targets(self, use: Use) -> list[int]:
        """The fallback blocks a use feeds (a layer's parameters, or a module's own)."""
        ids = (
            use.rows
            if use.module is None
            else [id(p) for p in use.module.parameters(recurse=False)]
        )
        return sorted({self._fallback[pid] for pid in ids if pid in self._fallback})


def make_plan(model: nn.Module, params: list[torch.Tensor], separate: bool, fallback: str) -> Plan:
    """The plan for ``params`` of ``model`` (``fallback``: "auto", "exact", "diagonal", "error")."""
    survey = _Survey(model)
    for p in params:
        if id(p) not in survey.owners:
            raise ValueError(f"a tensor of shape {tuple(p.shape)} in params is not in the model")
    kron = [p for p in params if _consistent(survey.roles.get(id(p), []))]
    layers = _layers(kron, survey, separate, {id(p) for p in params})
    kron_ids = {id(p) for p in kron}
    rest = [p for p in params if id(p) not in kron_ids]
    fallbacks = _fallbacks(rest, survey, separate, fallback)
    plan = Plan(layers, fallbacks, _sites(survey, params, kron_ids))
    _order_blocks(plan, params, separate)
    return plan


class _Survey:
    """The model's Kronecker roles and parameter owners, by id: ``roles`` id(param) ->
    [(role, "weight" | "bias")], ``owners`` id(param) -> [module], ``names``."""

    def __init__(self, model: nn.Module) -> None:
        self.roles: dict[int, list[tuple[Role, str]]] = {}
        self.owners: dict[int, list[nn.Module]] = {}
        self.module_names: dict[int, str] = {}
        self.kinds: dict[int, str | None] = {}
        self.attention_of: dict[int, nn.Module] = {}  # id(out_proj) -> its MHA
        for mod_name, module in model.named_modules():
            self.module_names[id(module)] = mod_name or "(root)"
            if isinstance(module, nn.MultiheadAttention):
                self.attention_of[id(module.out_proj)] = module
            for p in module.parameters(recurse=False):
                self.owners.setdefault(id(p), []).append(module)
            kind = self.kinds[id(module)] = site_kind(module)
            for role in roles_of(module, kind) if kind else []:
                for p, where in ((role.weight, "weight"), (role.bias, "bias")):
                    if p is not None:
                        self.roles.setdefault(id(p), []).append((role, where))
        self.names = {id(p): n for n, p in model.named_parameters()}

    def describe(self, p: torch.Tensor) -> str:
        """ "'name' (owned by module 'm' (Type), ...)" for messages."""
        mods = ", ".join(
            f"'{self.module_names[id(m)]}' ({type(m).__name__})" for m in self.owners[id(p)]
        )
        return f"'{self.names[id(p)]}' of {mods}"


def _consistent(uses: list[tuple[Role, str]]) -> bool:
    """One Kronecker geometry over every layer that uses the parameter."""
    if not uses or len({where for _, where in uses}) > 1:
        return False
    if uses[0][1] == "bias":
        return all(r.kind == "dense" for r, _ in uses)
    keys = {(r.kind, r.transposed, r.rows, r.cols, r.groups) for r, _ in uses}
    return len(keys) == 1


def _layers(
    params: list[torch.Tensor], survey: _Survey, separate: bool, chosen: set[int]
) -> list[Layer]:
    """One layer per Kronecker weight (with its bias when every use pairs them), then one
    per remaining bias; named by their module when they hold all of one module's roles."""
    ids, roles = {id(p) for p in params}, survey.roles
    layers, paired = [], set()
    for p in params:
        if roles[id(p)][0][1] != "weight":
            continue
        q = _partner(p, roles, ids)
        if q is not None:
            paired.add(id(q))
        layers.append(Layer("", roles[id(p)][0][0], p, q, joint=q is not None and not separate))
    for q in params:
        if roles[id(q)][0][1] == "bias" and id(q) not in paired:
            layers.append(Layer("", roles[id(q)][0][0], None, q, joint=False))
    for lay in layers:
        lay.name = _layer_name(lay, survey, chosen)
    return layers


def _partner(p: torch.Tensor, roles, ids) -> torch.Tensor | None:
    """The bias every use of weight ``p`` adds, if every use of that bias is one of ``p``."""
    uses = roles[id(p)]
    q = uses[0][0].bias
    if q is None or id(q) not in ids or q.numel() != uses[0][0].rows:
        return None
    if any(r.bias is not q for r, _ in uses):
        return None
    return q if all(r.weight is p for r, _ in roles[id(q)]) else None


def _layer_name(lay: Layer, survey: _Survey, chosen: set[int]) -> str:
    """The module's name when the layer holds all its chosen parameters, else theirs."""
    ps = [p for p in (lay.weight_param, lay.bias_param) if p is not None]
    modules = {id(r.module): r.module for p in ps for r, _ in survey.roles[id(p)]}
    if len(modules) == 1:
        (module,) = modules.values()
        roles = roles_of(module, survey.kinds[id(module)])
        mine = {id(p) for p in ps}
        if len(roles) == 1 and {id(p) for p in roles[0].params() if id(p) in chosen} == mine:
            return survey.module_names[id(module)]
    return "+".join(survey.names[id(p)] for p in ps)


def _fallbacks(
    params: list[torch.Tensor], survey: _Survey, separate: bool, mode: str
) -> list[Fallback]:
    """Fallback blocks: per parameter (separate) or per set of owning modules (joint)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if survey.roles.get(id(p)):  # tied across layer kinds: a block of its own
            key: tuple = ("tied", id(p))
        else:
            key = ("owners", *sorted(id(m) for m in survey.owners[id(p)]))
        groups.setdefault(("param", id(p)) if separate else key, []).append(p)
    out = []
    for ps in groups.values():
        reason = _reason(ps[0], survey)
        if mode == "error":
            raise ValueError(
                f"parameter {survey.describe(ps[0])} has no Kronecker block: {reason}. KFAC "
                f"factors {KRONECKER_LAYERS}; with fallback='error' nothing else is accepted. "
                "Use fallback='auto' (exact or diagonal blocks for the others), or pass "
                "params= without it"
            )
        numel = sum(p.numel() for p in ps)
        chosen = mode if mode != "auto" else ("exact" if numel <= EXACT_MAX else "diagonal")
        name = "+".join(survey.names[id(p)] for p in ps)
        out.append(Fallback(name, ps, chosen, reason))
    return out


def _reason(p: torch.Tensor, survey: _Survey) -> str:
    uses = survey.roles.get(id(p), [])
    if not uses:
        kinds = ", ".join(sorted({type(m).__name__ for m in survey.owners[id(p)]}))
        return f"its module ({kinds}) is not a Kronecker-factored layer"
    kinds = " and ".join(
        f"{type(r.module).__name__} '{survey.module_names[id(r.module)]}' ({where})"
        for r, where in uses
    )
    return (
        f"it is shared by {kinds}, whose Kronecker factors differ in shape or orientation "
        "(a sum of two Kronecker products is no Kronecker product)"
    )


def _sites(survey: _Survey, params: list[torch.Tensor], kron: set[int]) -> Sites:
    """The modules to hook: Kronecker layers using a chosen parameter (also for fallback
    blocks tied across kinds), MHA modules, and the owners of the other fallback blocks."""
    layers: dict[int, tuple[nn.Module, Role]] = {}
    attention: dict[int, nn.Module] = {}
    functional: dict[int, Role] = {}
    fallback: dict[int, nn.Module] = {}
    for p in params:
        for role, _ in survey.roles.get(id(p), []):
            module = role.module
            mha: nn.Module | None = module if isinstance(module, nn.MultiheadAttention) else None
            mha = mha or survey.attention_of.get(id(module))
            if mha is not None:
                attention[id(mha)] = mha
                functional[id(role)] = role
            if not isinstance(module, nn.MultiheadAttention):
                layers.setdefault(id(role), (module, role))
        if id(p) not in kron and not survey.roles.get(id(p)):
            for module in survey.owners[id(p)]:
                fallback[id(module)] = module
    return Sites(
        list(layers.values()), list(attention.values()), list(functional.values()),
        list(fallback.values()),
    )  # fmt: skip


def _order_blocks(plan: Plan, params: list[torch.Tensor], separate: bool) -> None:
    """The operator's blocks in order of first appearance in ``params`` (weight first), and
    each block's structure."""
    units: dict[int, object] = {}
    for lay in plan.layers:
        for p in (lay.weight_param, lay.bias_param):
            if p is not None:
                units[id(p)] = lay
    for fb in plan.fallbacks:
        for p in fb.params:
            units[id(p)] = fb
    done: set[int] = set()
    for p in params:
        unit = units[id(p)]
        if id(unit) in done:
            continue
        done.add(id(unit))
        if isinstance(unit, Fallback):
            plan.blocks.append(list(unit.params))
            plan.structures.append(unit.mode)
            continue
        assert isinstance(unit, Layer)
        structure = "kronecker-diagonal-A" if unit.embedding else "kronecker"
        ps = [q for q in (unit.weight_param, unit.bias_param) if q is not None]
        for block in [ps] if unit.joint else [[q] for q in ps]:
            plan.blocks.append(block)
            plan.structures.append(structure if block[0] is unit.weight_param else "kronecker")
