"""Per-example gradients of a classifier's margin, for any ``torch.nn.Module`` (torch.func)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import functional_call, grad, vmap


def margins_and_out_to_loss(logits: torch.Tensor, y: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """TRAK's model output and reweighting term for classification.

    The margin is the correct logit minus the log-sum-exp of the others (for two classes, the
    logit difference); the out-to-loss term is ``1 - p`` of the correct class.
    """
    correct = logits.gather(-1, y.view(-1, 1)).squeeze(-1)
    others = logits.scatter(-1, y.view(-1, 1), float("-inf")).logsumexp(-1)
    p = torch.softmax(logits, dim=-1).gather(-1, y.view(-1, 1)).squeeze(-1)
    return correct - others, 1.0 - p


def check_logits(logits: torch.Tensor, batch: int) -> None:
    """The model must return ``[batch, classes]`` logits with at least two classes."""
    if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] < 2:
        raise ValueError(
            f"the model must return logits of shape [batch, classes] with classes >= 2 for "
            f"task='classification'; it returned {tuple(logits.shape)} for a batch of {batch}. "
            "Wrap it so that it does (a binary model with one output: return "
            "torch.cat([-z / 2, z / 2], dim=1)).")


class GradientComputer:
    """Flattened per-example gradients of the margin w.r.t. (some of) a model's parameters.

    Parameters
    ----------
    model
        The classifier; evaluated in ``eval()`` mode with its buffers (BatchNorm statistics)
        frozen.
    grad_wrt
        Names of the parameters to differentiate (default: all that require grad).
    """

    def __init__(self, model: torch.nn.Module, grad_wrt: Sequence[str] | None = None):
        self.model = model
        named = dict(model.named_parameters())
        names = list(grad_wrt) if grad_wrt is not None else [
            k for k, v in named.items() if v.requires_grad]
        unknown = sorted(set(names) - set(named))
        if unknown:
            raise ValueError(f"grad_wrt names {unknown} are not parameters of the model.")
        if not names:
            raise ValueError("the model has no parameters to differentiate.")
        self.names = names
        self.grad_dim = int(sum(named[k].numel() for k in names))

    def _split(self):
        named = {k: v.detach() for k, v in self.model.named_parameters()}
        params = {k: named[k] for k in self.names}
        frozen = {k: v for k, v in named.items() if k not in params}
        buffers = {k: v.detach() for k, v in self.model.named_buffers()}
        return params, {**frozen, **buffers}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([batch, grad_dim] gradients of the margin, [batch] out-to-loss)``."""
        self.model.eval()
        params, rest = self._split()
        with torch.no_grad():
            logits = functional_call(self.model, (params, rest), (x,))
        check_logits(logits, x.shape[0])
        _, out_to_loss = margins_and_out_to_loss(logits, y)

        def margin(p, xi, yi):
            out = functional_call(self.model, (p, rest), (xi.unsqueeze(0),))
            return margins_and_out_to_loss(out, yi.view(1))[0].sum()

        grads = vmap(grad(margin), in_dims=(None, 0, 0))(params, x, y)
        flat = torch.cat([grads[k].reshape(x.shape[0], -1) for k in self.names], dim=1)
        return flat, out_to_loss.detach()
