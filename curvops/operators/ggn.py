"""GGNOperator: the generalised Gauss-Newton and the Fisher (Monte-Carlo, empirical).

Per batch, with J = ∂f/∂θ (f the model output) and L the batch loss:
  exact:      G = Jᵀ (∇²_f L) J                        (jvp -> closed-form loss Hessian -> vjp)
  mc:         F = s Σ_n Jₙᵀ (1/M Σ_m gₙₘ gₙₘᵀ) Jₙ,  gₙₘ = ∇_f ℓ(fₙ, ŷₙₘ), ŷ ~ p(y | fₙ)
  empirical:  E = s Σ_n Jₙᵀ gₙ gₙᵀ Jₙ,  gₙ = ∇_f ℓ(fₙ, yₙ),  i.e. s Σ_n ∇_θℓₙ ∇_θℓₙᵀ
(s the reduction factor; outer products span each data point's whole output.)
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp, vjp, vmap

from curvops.operators.base import CurvatureOperator
from curvops.operators.data import Batch
from curvops.operators.losses import output_loss
from curvops.operators.sampling import sample_generator

GGN_MODES = ("exact", "mc", "empirical")


class GGNOperator(CurvatureOperator):
    """GGN / Fisher of the whole-data loss (P, P), positive semi-definite.

    Args:
        mode: "exact" (type-2 GGN), "mc" (Monte-Carlo Fisher with labels sampled from the
            model's predictive distribution) or "empirical" (per-example gradient outer
            products with the true labels).
        mc_samples: labels drawn per data point in "mc" mode (variance ∝ 1 / mc_samples).
        seed: the MC labels of a batch come from the seed and the batch's content, so every
            product sees the same matrix, whatever the batch order or the rank holding it.
    ``loss_fn`` must be nn.MSELoss, nn.CrossEntropyLoss or nn.BCEWithLogitsLoss (mean or
    sum); other keyword arguments: see ``CurvatureOperator``.
    """

    is_psd = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        mode: str = "exact",
        mc_samples: int = 1,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if mode not in GGN_MODES:
            raise ValueError(f"mode must be one of {GGN_MODES}, got {mode!r}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.output_loss = output_loss(loss_fn)
        self.mode, self.mc_samples, self.seed = mode, mc_samples, seed
        super().__init__(model, loss_fn, data, **kwargs)

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(Vs)
        for block in self.layout.blocks:
            for i, r in zip(block, self._block_matmat(batch, block, [Vs[i] for i in block])):
                out[i] = r
        return out

    def _block_matmat(self, batch: Batch, block, vs) -> tuple[torch.Tensor, ...]:
        names = [self.layout.names[i] for i in block]
        primals = tuple(self.layout.params[i].detach() for i in block)

        def output_of(*ps):
            out = functional_call(self.model, dict(zip(names, ps)), (batch.X,))
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"the model returned a {type(out).__name__}; GGN/Fisher need a tensor "
                    "output: wrap the model so that forward returns the logits"
                )
            return out

        f, pullback = vjp(output_of, *primals)
        self.output_loss.check_targets(f, batch.y)
        JV = vmap(lambda *v: jvp(output_of, primals, v)[1])(*vs)  # (k, *f.shape)
        HJV = self._output_matmat(f.detach(), batch, JV)
        return vmap(pullback)(HJV)

    def _output_matmat(self, f: torch.Tensor, batch: Batch, U: torch.Tensor) -> torch.Tensor:
        """The output-space curvature of the batch loss times U (k, B, ...)."""
        loss = self.output_loss
        if self.mode == "exact":
            return loss.hessian_matmat(f, batch.y, U)
        if self.mode == "mc":
            gen = sample_generator(self.seed, batch, f.device)
            g = loss.sampled_grads(f, batch.y, self.mc_samples, gen) / self.mc_samples**0.5
        else:
            g = loss.true_grads(f, batch.y).unsqueeze(0)  # (1, B, ...)
        g = g.flatten(start_dim=2)  # (M, B, D)
        coeff = torch.einsum("mbd,kbd->kmb", g, U.flatten(start_dim=2))
        out = torch.einsum("kmb,mbd->kbd", coeff, g)
        return out.reshape(U.shape) * loss.scale(f, batch.y)
