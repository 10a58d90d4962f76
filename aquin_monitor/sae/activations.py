"""A SAE's activations on a set of embeddings as one sparse matrix (the analyses' common input).

A TopK SAE gives at most ``k`` non-zero activations per text, so ``n`` texts need ``n·k`` stored
values whatever the dictionary size; the browser, the co-activation network and the diagnostics
all read this matrix instead of encoding again.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(8, 32, 4, seed=0)
    >>> z = sparse_activations(sae, np.random.default_rng(0).normal(size=(10, 8)))
    >>> z.shape, int(z.getnnz(axis=1).max()) <= 4
    ((10, 32), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import torch

__all__ = ["sparse_activations"]


@torch.no_grad()
def sparse_activations(sae: Any, x: np.ndarray | torch.Tensor, *, batch_size: int = 8192) -> scipy.sparse.csr_matrix:
    """Activations ``z`` of ``sae`` on ``x`` as a CSR matrix ``[n, num_latents]`` (float32, zeros dropped).

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x: embeddings ``[n, d_in]``.
        batch_size: rows encoded at a time.

    Returns:
        The sparse activation matrix; row ``i`` holds text ``i``'s active features.

    Raises:
        ValueError: ``x`` is not ``[n, d_in]`` or has a NaN/inf (named by its row).
    """
    device = sae.W_dec.device
    x = torch.as_tensor(x, dtype=torch.float32).to(device)
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"embeddings must be [n, {sae.d_in}], got {tuple(x.shape)}")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"embeddings row {int((~finite).nonzero()[0])}: not finite (NaN or inf)")
    rows, cols, vals = [], [], []
    for start in range(0, len(x), batch_size):
        acts, indices, _ = sae.encode_topk(x[start : start + batch_size])
        fired = acts > 0
        row = torch.arange(start, start + len(acts), device=device)[:, None].expand_as(acts)
        rows.append(row[fired].cpu().numpy())
        cols.append(indices[fired].cpu().numpy())
        vals.append(acts[fired].float().cpu().numpy())
    if not rows:
        return scipy.sparse.csr_matrix((0, sae.num_latents), dtype=np.float32)
    matrix = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(x), sae.num_latents)
    )
    return matrix.tocsr()
