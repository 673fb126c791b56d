"""The top-k SAE as a torch module, with the paper's initialisation and decoder constraints.

Decoding is sparse: only the k active rows of the decoder are gathered and summed
(``embedding_bag``), instead of a dense (B, n) @ (n, d) matmul over mostly-zero codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saedb.sae import SAE


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

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x - self.b_pre, self.w_enc, self.b_lat)

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        out = F.embedding_bag(indices, self.w_dec, per_sample_weights=values, mode="sum")
        return out + self.b_pre if with_bias else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, top-k indices, top-k activations, pre-activations)."""
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.k, dim=1, sorted=False)
        values = F.relu(values)
        return self.decode_sparse(indices, values), indices, values, pre

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        if self.w_dec.grad is not None:
            parallel = (self.w_dec.grad * self.w_dec).sum(dim=1, keepdim=True)
            self.w_dec.grad -= parallel * self.w_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec.data = F.normalize(self.w_dec.data, dim=1)

    def to_numpy(self) -> SAE:
        """Export to the numpy core used by the SQL functions."""
        as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        return SAE(w_enc=as_np(self.w_enc), b_lat=as_np(self.b_lat), w_dec=as_np(self.w_dec), b_pre=as_np(self.b_pre), k=self.k)


def normalised_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """MSE divided by the batch variance of x (the MSE of predicting the batch mean)."""
    return (x_hat - x).pow(2).sum(dim=1).mean() / (x - x.mean(dim=0)).pow(2).sum(dim=1).mean()
