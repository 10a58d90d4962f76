"""The SAE formats ``aquin-monitor sae convert`` reads, in a module of their own that imports nothing: the
command's parser offers them as ``--from`` choices, and building the CLI's parser must not load torch
(:mod:`aquin_monitor.sae.convert`, which converts them, does).

>>> SOURCES
('csr', 'latentsae', 'sparsify')
"""

from __future__ import annotations

__all__ = ["SOURCES"]

#: ``csr``: sentence-transformers' CSR ``SparseAutoEncoder``; ``latentsae``: latentsae's ``Sae``;
#: ``sparsify``: EleutherAI sparsify's folder (see :mod:`aquin_monitor.sae.convert`)
SOURCES = ("csr", "latentsae", "sparsify")
