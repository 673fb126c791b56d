"""The top-k SAE as a torch module, with the paper's initialisation and decoder constraints.

Training exploits sparsity both ways (as Gao et al. 2024 do with their kernels):
- decoding gathers only the k active decoder rows (``embedding_bag``) instead of a dense
  (B, n) @ (n, d) product over mostly-zero codes;
- the encoder's backward touches only the selected latents: its weight gradient is a
  sparse (n, B) @ (B, d) product with B·(k + k_aux) non-zeros, not a dense (n, B) @ (B, d).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from saedb.sae import SAE


def sparse_rows_product(rows: torch.Tensor, weights: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    """(n, d) matrix whose row i is the sum of weights[b, j] * x[b] over all rows[b, j] == i."""
    batch, per_row = rows.shape
    flat = rows.flatten()
    order = flat.int().argsort(stable=True)  # int32 radix sort: about twice as fast as int64
    crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.bincount(flat, minlength=n).cumsum(0)
    columns = torch.arange(batch, device=x.device).repeat_interleave(per_row)[order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        matrix = torch.sparse_csr_tensor(crow, columns, weights.flatten()[order], size=(n, batch), check_invariants=False)
        return matrix @ x


class SelectedPreActivations(torch.autograd.Function):
    """pre[b, selected[b, j]] with a sparse backward to the encoder weights and bias.

    ``pre`` = x @ w_enc.T + bias is computed by the caller without autograd; only the
    selected entries carry gradient, so the backward costs O(B·m·d) instead of O(B·n·d).
    """

    @staticmethod
    def forward(ctx, pre: torch.Tensor, x: torch.Tensor, w_enc: torch.Tensor, bias: torch.Tensor, selected: torch.Tensor):
        ctx.save_for_backward(x, selected)
        ctx.n_latents = w_enc.shape[0]
        return pre.gather(1, selected)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, selected = ctx.saved_tensors
        grad_w = sparse_rows_product(selected, grad, x, ctx.n_latents)
        grad_bias = torch.zeros(ctx.n_latents, dtype=grad.dtype, device=grad.device).index_add_(0, selected.flatten(), grad.flatten())
        return None, None, grad_w, grad_bias, None


FIT_ROWS = 1024  # rows per forward pass when fitting the encoder scale (a training batch's footprint)


class TopKSAE(nn.Module):
    def __init__(self, d: int, n_latents: int, k: int, b_pre: torch.Tensor) -> None:
        super().__init__()
        self.k = k
        w_dec = torch.empty(n_latents, d)
        nn.init.xavier_uniform_(w_dec)
        w_dec = F.normalize(w_dec, dim=1)
        self.w_dec = nn.Parameter(w_dec)  # (n, d): row i is latent i's direction
        self.w_enc = nn.Parameter(w_dec.clone())  # encoder = decoder^T at init
        self.b_lat = nn.Parameter(torch.zeros(n_latents))
        self.b_pre = nn.Parameter(b_pre.clone().float())

    @torch.no_grad()
    def fit_encoder_scale(self, sample: torch.Tensor, factor: float = 1.0) -> float:
        """Scale W_enc (still W_decᵀ) by ``factor`` times the s that best reconstructs ``sample``, and return s.

        With b_lat = 0 the top-k choice does not depend on s > 0 and the reconstruction less
        b_pre is s·r (r: that of the unscaled encoder), so s = <x - b_pre, r> / <r, r>. Unit
        encoder rows overshoot (the k largest projections onto directions that are not
        orthogonal sum past x - b_pre: s is about 0.64 at k=32, n=3072 on MiniLM vectors) and
        Adam then spends hundreds of steps shrinking them; s is left at 1 if r is zero. The sums
        run over FIT_ROWS rows at a time: no (sample, n_latents) matrix at start-up."""
        along = energy = 0.0
        for rows in sample.split(FIT_ROWS):
            r = self(rows)[0] - self.b_pre
            along += float(((rows - self.b_pre) * r).sum())
            energy += float(r.pow(2).sum())
        scale = along / energy if energy > 0 else 1.0
        if not (math.isfinite(scale) and scale > 0):
            scale = 1.0
        self.w_enc.mul_(factor * scale)
        return scale

    def folded_bias(self) -> torch.Tensor:
        """W_enc (x - b_pre) + b_lat = W_enc x + (b_lat - W_enc b_pre): x then needs no gradient."""
        return self.b_lat - self.w_enc @ self.b_pre

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w_enc, self.folded_bias())

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        out = F.embedding_bag(indices, self.w_dec, per_sample_weights=values, mode="sum")
        return out + self.b_pre if with_bias else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, top-k indices, top-k activations)."""
        values, indices = self.pre_activations(x).topk(self.k, dim=1, sorted=False)
        values = F.relu(values)
        return self.decode_sparse(indices, values), indices, values

    def encode_for_training(
        self, x: torch.Tensor, dead: torch.Tensor, k_aux: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k (indices, activations) and the top-k_aux among dead latents (indices,
        activations; empty when none is dead), all with sparse gradients."""
        bias = self.folded_bias()
        with torch.no_grad():  # bias folded into the GEMM: no separate (B, n) broadcast pass
            ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
            pre = torch.cat([x, ones], dim=1) @ torch.cat([self.w_enc, bias[:, None]], dim=1).T
            indices = pre.topk(self.k, dim=1, sorted=False).indices
            dead_ids = dead.nonzero().squeeze(1)
            if dead_ids.numel():  # search only the dead columns
                positions = pre.index_select(1, dead_ids).topk(min(k_aux, dead_ids.numel()), dim=1, sorted=False).indices
                aux_indices = dead_ids[positions]
            else:
                aux_indices = indices[:, :0]
        selected = torch.cat([indices, aux_indices], dim=1)
        acts = F.relu(SelectedPreActivations.apply(pre, x, self.w_enc, bias, selected))
        return indices, acts[:, : self.k], aux_indices, acts[:, self.k :]

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        if self.w_dec.grad is not None:
            parallel = (self.w_dec.grad * self.w_dec).sum(dim=1, keepdim=True)
            self.w_dec.grad -= parallel * self.w_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec.div_(self.w_dec.norm(dim=1, keepdim=True))

    def to_numpy(self) -> SAE:
        """Export to the numpy core used by the SQL functions."""
        as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        return SAE(w_enc=as_np(self.w_enc), b_lat=as_np(self.b_lat), w_dec=as_np(self.w_dec), b_pre=as_np(self.b_pre), k=self.k)


def normalised_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """MSE divided by the batch variance of x (the MSE of predicting the batch mean)."""
    return (x_hat - x).pow(2).sum(dim=1).mean() / (x - x.mean(dim=0)).pow(2).sum(dim=1).mean()
