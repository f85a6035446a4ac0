"""SAS: Subsets that maximize Augmentation Similarity (Joshi & Mirzasoleiman, ICML 2023).

For contrastive self-supervised learning, the examples that contribute most are those most similar (in a proxy
encoder's embedding space) to the other examples of their latent class.

* **Paper.** Per latent class V_k with budget r_k = |V_k|/|V|·B, maximize the non-monotone submodular graph cut
  F_k(S) = Σ_{i∈V_k∖S} Σ_{j∈S} s_ij with s_ij the (thresholded) cosine similarity of proxy embeddings, by greedy
  followed by a double-greedy refinement. Latent classes come from a CLIP probe, CLIP zero-shot or k-means.
* **Code** (``sas-data-efficient-contrastive-learning``). The objective's "add" step zeroes the chosen row, so its
  lazy greedy returns the examples sorted by the row sum of the thresholded cosine matrix, self-similarity
  included: a modular *centrality* score per example. No double greedy. Each class keeps its top
  floor(fraction·|V_k|). Similarities below the threshold (default 0; the paper uses 0.5 for CIFAR-10) are 0.
* **Ours.** ``objective="centrality"`` (default) is the code's ranking: per latent class, the thresholded cosine
  row sums are computed in row blocks of ``block_size`` (no n_k×n_k matrix kept) with the backend's
  ``cosine_similarity`` op and the per-class top r_k taken with its ``group_topk`` op.
  ``objective="greedy"`` is the paper's greedy on F_k: the gain of e is rowsum_e − s_ee − 2·Σ_{j∈S} s_je, updated
  with one similarity row per pick; it always fills the class budget (gains may turn negative once S is large,
  the greedy continues as the budget asks). The double-greedy refinement is not done (the code does not do it
  either; it can only shrink the set below the budget). Latent classes are the given ``groups`` ids, or k-means
  (:mod:`nessa.selection.kmeans`, seeded by ``seed``) on the embeddings with ``num_latent_classes`` clusters.
  Budgets per latent class are the paper's r_k = |V_k|/|V|·B split by largest remainder
  (:func:`nessa.selection.budget.largest_remainder`), so the total is exactly the budget B (the code floors
  fraction·|V_k|, which can fall short of B); weights are ones (SAS defines none). The reported ``objective`` is
  the paper's Σ_k F_k(S_k) for either ordering, so the two can be compared. Output order: the per-class rank
  (greedy) orders merged
  by :func:`nessa.selection.facility_location.interleave` (any prefix is balanced over the latent classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import count_from_budget, largest_remainder
from nessa.selection.facility_location import interleave
from nessa.selection.options import Options, option
from nessa.selection.registry import register

__all__ = ["SAS", "SASOptions", "graph_cut_objective", "thresholded_centrality"]

_OBJECTIVES = ("centrality", "greedy")
#: Largest class (elements of the n_k × n_k similarity matrix) the greedy keeps as one dense matrix on the host;
#: larger classes compute one similarity row per pick instead.
_MAX_DENSE = 1 << 24


def _cos_block(ops: Any, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    sim = np.asarray(ops.cosine_similarity(a, b), dtype=np.float32)
    sim[sim < threshold] = 0.0
    return sim


def thresholded_centrality(
    embeddings: np.ndarray, threshold: float = 0.0, *, backend: str = "opencl", block_size: int = 1024
) -> np.ndarray:
    """Row sums of the thresholded cosine-similarity matrix of ``embeddings`` (self-similarity included).

    This is the SAS code's ranking score within one latent class: s_ij = cos(z_i, z_j), set to 0 where it is
    below ``threshold``, and score_i = Σ_j s_ij.

    Args:
        embeddings: float32 (n, d) embeddings of one latent class.
        threshold: similarities below it count as 0.
        backend: ``"opencl"`` or ``"numpy"``: where the cosine similarities are computed.
        block_size: rows of the similarity matrix computed at a time (memory is block_size × n floats).

    Returns:
        float64 (n,) centrality scores.
    """
    from nessa.accel.selection_ops import get_ops

    ops = get_ops(backend)
    z = np.ascontiguousarray(embeddings, dtype=np.float32)
    scores = np.empty(len(z), dtype=np.float64)
    for start in range(0, len(z), block_size):
        block = _cos_block(ops, z[start : start + block_size], z, threshold)
        scores[start : start + len(block)] = block.sum(axis=1, dtype=np.float64)
    return scores


def graph_cut_objective(
    embeddings: np.ndarray,
    selected: np.ndarray,
    threshold: float = 0.0,
    *,
    backend: str = "opencl",
    block_size: int = 1024,
    centrality: np.ndarray | None = None,
) -> float:
    """The SAS paper's objective F(S) = Σ_{i∉S} Σ_{j∈S} s_ij for one latent class.

    Args:
        embeddings: float32 (n, d) embeddings of the class.
        selected: positions (into ``embeddings``) of the chosen examples, unique.
        threshold: similarities below it count as 0.
        backend: ``"opencl"`` or ``"numpy"``.
        block_size: rows computed at a time.
        centrality: the class's :func:`thresholded_centrality` if already known (saves a pass).

    Returns:
        F(S) as a float.
    """
    from nessa.accel.selection_ops import get_ops

    sel = np.asarray(selected, dtype=np.int64)
    if len(sel) == 0:
        return 0.0
    ops = get_ops(backend)
    z = np.ascontiguousarray(embeddings, dtype=np.float32)
    if centrality is None:
        centrality = thresholded_centrality(z, threshold, backend=backend, block_size=block_size)
    zs = z[sel]
    inside = 0.0
    for start in range(0, len(zs), block_size):
        inside += float(_cos_block(ops, zs[start : start + block_size], zs, threshold).sum(dtype=np.float64))
    # Σ_{i∉S, j∈S} s_ij = Σ_{j∈S} rowsum_j − Σ_{i,j∈S} s_ij (s is symmetric).
    return float(np.sum(centrality[sel]) - inside)


def _greedy_graph_cut(
    z: np.ndarray, k: int, threshold: float, ops: Any, block_size: int, centrality: np.ndarray
) -> np.ndarray:
    """Greedy on F(S) = Σ_{i∉S} Σ_{j∈S} s_ij; exactly ``k`` picks, ties to the lowest position."""
    n = len(z)
    dense: np.ndarray | None = None
    if n * n <= _MAX_DENSE:
        dense = np.empty((n, n), dtype=np.float32)
        for start in range(0, n, block_size):
            dense[start : start + block_size] = _cos_block(ops, z[start : start + block_size], z, threshold)
        diag = dense.diagonal().astype(np.float64)
    else:
        self_sim = np.einsum("ij,ij->i", z, z, dtype=np.float64)
        diag = np.where(self_sim > 0, 1.0, 0.0)
        diag[diag < threshold] = 0.0
    base = centrality - diag
    covered = np.zeros(n, dtype=np.float64)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for step in range(k):
        gains = base - 2.0 * covered
        gains[taken] = -np.inf
        pick = int(np.argmax(gains))  # first maximum: lowest position on ties
        order[step] = pick
        taken[pick] = True
        row = dense[pick] if dense is not None else _cos_block(ops, z[pick : pick + 1], z, threshold)[0]
        covered += row
    return order


@dataclass(frozen=True)
class SASOptions(Options):
    """SAS's options (see :class:`SAS`)."""

    threshold: float = option(0.0, "number", low=-1.0, high=1.0, help="cosines below it count as 0")
    objective: str = option("centrality", "choice", choices=_OBJECTIVES, help="the code's ranking or the paper's")
    num_latent_classes: int | None = option(None, "int", low=1, help="k-means latent classes (None: use groups)")
    kmeans_max_iter: int = option(300, "int", low=1, help="most Lloyd iterations of that k-means")
    backend: str = option("opencl", "choice", choices=("opencl", "numpy"), help="where similarities are computed")
    block_size: int = option(1024, "int", low=1, help="rows of a similarity matrix computed at a time")


@register
class SAS(Selector):
    """SAS (Joshi & Mirzasoleiman 2023): per latent class, the most augmentation-similar (central) examples.

    Inputs: ``embeddings`` (proxy encoder outputs, e.g. a SimCLR projection of clean images) and, unless
    ``num_latent_classes`` is set, ``groups`` (latent class ids, e.g. a CLIP probe's predictions).

    Options:
        threshold: cosine similarities below it count as 0 (code default 0; paper 0.5 for CIFAR-10).
        objective: ``"centrality"`` (the code's thresholded row-sum ranking) or ``"greedy"`` (the paper's
            greedy on the graph-cut objective).
        num_latent_classes: if set, latent classes come from seeded k-means with this many clusters on the
            embeddings (then ``groups`` must not be given).
        kmeans_max_iter: most Lloyd iterations of that k-means (the SAS recipe allows 1000).
        backend: ``"opencl"`` (default) or ``"numpy"``.
        block_size: rows of a similarity matrix computed at a time (code: 1024).
    """

    name: ClassVar[str] = "sas"
    description: ClassVar[str] = (
        "SAS (ICML 2023): per latent class, keep the examples with the largest thresholded cosine centrality "
        "(or the paper's greedy graph cut) in a proxy embedding space; for contrastive SSL"
    )
    Options: ClassVar[type[Options]] = SASOptions

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``embeddings``, plus ``groups`` unless ``num_latent_classes`` asks for k-means latent classes."""
        return ("embeddings",) if opts.num_latent_classes is not None else ("embeddings", "groups")

    def _latent_classes(self, inputs: SelectionInputs, seed: int) -> np.ndarray:
        k = self.config["num_latent_classes"]
        if k is None:
            if inputs.groups is None:
                raise InvalidArgumentError(
                    "sas needs latent classes: pass groups (latent class id per sample) or set the option "
                    "num_latent_classes to cluster the embeddings with k-means"
                )
            return inputs.groups
        if inputs.groups is not None:
            raise InvalidArgumentError(
                "sas: got both groups and num_latent_classes; pass groups to use given latent classes, or "
                "num_latent_classes (without groups) to cluster the embeddings"
            )
        if inputs.embeddings is None:  # guaranteed by ``requires``; kept for the type checker
            raise InvalidArgumentError("sas needs embeddings")
        if k > len(inputs.embeddings):
            raise InvalidArgumentError(
                f"sas: num_latent_classes={k} exceeds the number of samples ({len(inputs.embeddings)})"
            )
        from nessa.selection.kmeans import kmeans

        result = kmeans(
            inputs.embeddings,
            int(k),
            seed=seed,
            max_iter=int(self.config["kmeans_max_iter"]),
            backend=self.config["backend"],
        )
        return result.labels

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        from nessa.accel.selection_ops import get_ops

        cfg = self.config
        z = inputs.embeddings
        if z is None:  # guaranteed by ``requires``; kept for the type checker
            raise InvalidArgumentError("sas needs embeddings")
        n = len(z)
        k = count_from_budget(n, budget)
        groups = self._latent_classes(inputs, seed)
        ids_all, sizes = np.unique(groups, return_counts=True)
        shares = largest_remainder(k, [int(c) for c in sizes])
        budgets = {int(g): int(b) for g, b in zip(ids_all, shares, strict=True)}
        ops = get_ops(cfg["backend"])
        threshold = float(cfg["threshold"])
        block = int(cfg["block_size"])
        ids = sorted(budgets)
        members = {g: np.flatnonzero(groups == g) for g in ids}
        centrality = np.empty(n, dtype=np.float64)
        for g in ids:
            idx = members[g]
            centrality[idx] = thresholded_centrality(z[idx], threshold, backend=cfg["backend"], block_size=block)

        chosen: list[np.ndarray] = []
        if cfg["objective"] == "centrality":
            picked = np.asarray(ops.group_topk(centrality, groups, {g: budgets[g] for g in ids}), dtype=np.int64)
            for g in ids:
                mine = picked[groups[picked] == g]
                # rank order within the class: score descending, lowest index first on ties
                chosen.append(mine[np.lexsort((mine, -centrality[mine]))])
        else:
            for g in ids:
                idx = members[g]
                local = _greedy_graph_cut(
                    np.ascontiguousarray(z[idx]), budgets[g], threshold, ops, block, centrality[idx]
                )
                chosen.append(idx[local])

        objective = 0.0
        for g, sel in zip(ids, chosen, strict=True):
            idx = members[g]
            position = np.searchsorted(idx, sel)
            objective += graph_cut_objective(
                z[idx], position, threshold, backend=cfg["backend"], block_size=block, centrality=centrality[idx]
            )
        indices = interleave(chosen)
        return Subset(
            indices=indices,
            weights=np.ones(len(indices), dtype=np.float32),
            objective=objective,
            extras={
                "num_latent_classes": len(ids),
                "latent_class_budgets": {int(g): int(budgets[g]) for g in ids},
                "latent_classes_from": "groups" if cfg["num_latent_classes"] is None else "kmeans",
            },
        )
