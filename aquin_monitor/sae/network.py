"""Co-activation network of a SAE's features over a corpus.

With ``B`` the binary [n texts, n features] matrix "feature fires on text" (sparse), the
co-activation counts are ``C = Bᵀ B`` (a sparse product: ``n·k²`` work for a TopK SAE, whatever
the dictionary size). An edge joins features ``i`` and ``j`` when they fire together on at least
``min_support`` texts and their normalised pointwise mutual information (Bouma 2009)

    NPMI_ij = log(p_ij / (p_i p_j)) / −log p_ij,   p_i = n_i / n,  p_ij = C_ij / n

is at least ``threshold`` (NPMI is 1 for features that always fire together, 0 for independent
ones, −1 for features that never meet). Each edge also carries the conditional frequencies
``C_ij / n_i`` and ``C_ij / n_j`` (how often ``j`` fires when ``i`` does, and back). Communities
are networkx's Louvain communities on the NPMI-weighted graph (seeded); node positions for drawing
are networkx's spring layout (seeded).

Example:

    >>> import numpy as np, scipy.sparse
    >>> z = scipy.sparse.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1.0]]))
    >>> net = coactivation_network(z, min_support=2, threshold=0.5)
    >>> [(e.source, e.target, round(e.npmi, 3), e.count) for e in net.edges]
    [(0, 1, 1.0, 2)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.sparse

from .stats import FeatureStats, feature_stats_from_activations

__all__ = [
    "CoactivationNetwork",
    "Edge",
    "Node",
    "coactivation_counts",
    "coactivation_network",
    "communities_and_layout",
]


@dataclass
class Node:
    """A feature in the network: size = mean activation, colour = frequency."""

    index: int
    frequency: float
    mean_activation: float
    community: int = -1
    x: float = 0.0
    y: float = 0.0


@dataclass
class Edge:
    """Two features that fire together (``source < target``)."""

    source: int
    target: int
    count: int
    """Texts on which both fire (C_ij)."""
    npmi: float
    p_target_given_source: float
    """C_ij / n_source."""
    p_source_given_target: float
    """C_ij / n_target."""


@dataclass
class CoactivationNetwork:
    """Nodes (features with at least one edge, or all drawn ones), edges and communities."""

    n_texts: int
    threshold: float
    min_support: int
    nodes: list[Node]
    edges: list[Edge]
    communities: list[list[int]] = field(default_factory=list)
    normalisation: str = "NPMI = log(p_ij/(p_i p_j)) / -log p_ij; edges also carry C_ij/n_i and C_ij/n_j"

    def neighbours(self, feature: int) -> list[tuple[int, Edge]]:
        """Edges of ``feature`` as ``(other feature, edge)``, strongest NPMI first."""
        found = [
            (e.target if e.source == feature else e.source, e) for e in self.edges if feature in (e.source, e.target)
        ]
        return sorted(found, key=lambda pair: (-pair[1].npmi, pair[0]))


def coactivation_counts(
    activations: scipy.sparse.spmatrix | FeatureStats,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """``(C, n_i)``: sparse co-activation counts ``BᵀB`` (diagonal = ``n_i``) and per-feature counts (float64),
    of an activation matrix or read from streamed :class:`~aquin_monitor.sae.stats.FeatureStats`."""
    stats = (
        activations
        if isinstance(activations, FeatureStats)
        else feature_stats_from_activations(activations, examples=1)
    )
    return stats.coactivation.astype(np.float64), stats.counts.astype(np.float64)


def coactivation_network(
    activations: scipy.sparse.spmatrix | FeatureStats,
    *,
    threshold: float = 0.3,
    min_support: int = 5,
    max_nodes: int | None = 300,
    seed: int = 0,
) -> CoactivationNetwork:
    """Co-activation network of the features in a sparse activation matrix ``[n texts, n features]``.

    Args:
        activations: SAE activations (e.g. :func:`aquin_monitor.sae.activations.sparse_activations`), or
            their streamed :class:`~aquin_monitor.sae.stats.FeatureStats`.
        threshold: least NPMI of an edge.
        min_support: least number of texts two features share for an edge.
        max_nodes: keep the edges among the ``max_nodes`` features of largest total activation that
            have an edge (``None``: all), so the drawing stays readable.
        seed: seeds the communities and the layout.

    Returns:
        A :class:`CoactivationNetwork`; its nodes are the features left with at least one edge.
    """
    stats = (
        activations
        if isinstance(activations, FeatureStats)
        else feature_stats_from_activations(activations, examples=1)
    )
    n = stats.n_texts
    counts, n_i = coactivation_counts(stats)
    upper = scipy.sparse.triu(counts, k=1).tocoo()
    keep = upper.data >= min_support
    i, j, c = upper.row[keep], upper.col[keep], upper.data[keep]
    p_ij, p_i, p_j = c / n, n_i[i] / n, n_i[j] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.where(p_ij >= 1.0, 1.0, np.log(p_ij / (p_i * p_j)) / -np.log(p_ij))
    keep = npmi >= threshold
    i, j, c, npmi = i[keep], j[keep], c[keep], npmi[keep]
    total = stats.total
    linked = np.unique(np.concatenate([i, j]))
    if max_nodes is not None and len(linked) > max_nodes:
        linked = linked[np.lexsort((linked, -total[linked]))][:max_nodes]
        inside = np.isin(i, linked) & np.isin(j, linked)
        i, j, c, npmi = i[inside], j[inside], c[inside], npmi[inside]
        linked = np.unique(np.concatenate([i, j]))
    edges = [
        Edge(int(a), int(b), int(k), float(s), float(k / n_i[a]), float(k / n_i[b]))
        for a, b, k, s in zip(i, j, c, npmi)
    ]
    edges.sort(key=lambda e: (e.source, e.target))
    nodes = [Node(int(f), float(n_i[f] / n), float(total[f] / n_i[f])) for f in linked]
    communities = communities_and_layout(nodes, edges, seed)
    return CoactivationNetwork(
        n_texts=n, threshold=threshold, min_support=min_support, nodes=nodes, edges=edges, communities=communities
    )


def communities_and_layout(nodes: list[Node], edges: list[Edge], seed: int) -> list[list[int]]:
    """Louvain communities (largest first) and spring-layout positions in [0, 1]², set on the nodes."""
    if not nodes:
        return []
    graph = nx.Graph()
    graph.add_nodes_from(node.index for node in nodes)
    graph.add_weighted_edges_from((e.source, e.target, e.npmi) for e in edges)
    found = nx.community.louvain_communities(graph, weight="weight", seed=seed)
    communities = sorted((sorted(int(f) for f in group) for group in found), key=lambda g: (-len(g), g[0]))
    position = nx.spring_layout(graph, weight="weight", seed=seed)
    xy = np.array([position[node.index] for node in nodes], dtype=np.float64).reshape(len(nodes), 2)
    span = np.where(np.ptp(xy, axis=0) > 0, np.ptp(xy, axis=0), 1.0)
    xy = (xy - xy.min(axis=0)) / span
    member = {f: c for c, group in enumerate(communities) for f in group}
    for node, (x, y) in zip(nodes, xy):
        node.community, node.x, node.y = member[node.index], float(x), float(y)
    return communities
