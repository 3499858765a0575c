r"""Softmax sums over the row versions held at each timestep, in ``O((V + L) log L)``, not ``O(L x N)``.

A :class:`~wsigym.agents.row_table.RowTable` of ``L`` timesteps holds ``V`` row versions; version
``v`` is held during one interval of timesteps :math:`[a_v, b_v)` (from the step that wrote it to the
step that overwrote it). A policy whose per-row scores depend on the version alone (no per-timestep
channel) needs, for every timestep ``t``, sums over the versions held at ``t``:

.. math::
    \text{lse}_t = \log \sum_{v \ni t} e^{x_v}, \qquad
    \bar c_t = \sum_{v \ni t} \frac{e^{x_v}}{e^{\text{lse}_t}} c_v

(the actor's normaliser and entropy, the critic's attention pooling). Gathering the ``N`` held
versions of every timestep costs ``L x N``; here each interval is split into the ``O(log L)``
nodes of a segment tree over time that cover it exactly, every node sums its versions once, and
timestep ``t`` adds the ``log2(size) + 1`` nodes on its leaf-to-root path (each held version is in
exactly one of them). Sums are stabilised per node (the largest ``x`` of the node, taken without
gradient) and combined in the log domain, so no term is subtracted and nothing cancels: the result
equals the dense softmax to float rounding, with gradients through autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class HeldTree(NamedTuple):
    """Which segment-tree nodes cover each version's interval of ``L`` timesteps (:func:`held_tree`).

    ``version``/``node`` are the ``Q`` (version, node) pairs: node ``node[q]`` holds version
    ``version[q]``; ``ancestors (L, A)`` lists the nodes on each timestep's path to the root;
    ``nodes`` is the number of node slots. Pairs of several tables are concatenated by :func:`pack`.
    """

    version: Tensor  #: ``(Q,)`` long
    node: Tensor  #: ``(Q,)`` long
    ancestors: Tensor  #: ``(L, A)`` long
    nodes: int


def held_tree(first: Tensor, end: Tensor, steps: int) -> HeldTree:
    """The tree of versions held during ``[first[v], end[v])`` (``first >= end``: never held) of
    ``steps`` timesteps. ``first``/``end`` are ``(V,)`` long."""
    size = 1 << max(steps - 1, 0).bit_length()  # leaves: a power of two >= steps
    held = torch.nonzero(first < end).squeeze(-1)
    lo, hi = first[held] + size, end[held] + size
    versions, nodes = [], []
    while held.numel():  # the iterative segment-tree range split, one level per pass
        left = (lo & 1).bool()  # lo is a right child: it is a node of the range
        right = (hi & 1).bool()  # hi - 1 is a left child's sibling: it is a node of the range
        versions += [held[left], held[right]]
        nodes += [lo[left], hi[right] - 1]
        lo, hi = (lo + left) >> 1, (hi - right.long()) >> 1
        keep = lo < hi
        held, lo, hi = held[keep], lo[keep], hi[keep]
    empty = first.new_empty(0)
    leaves = torch.arange(steps, device=first.device) + size
    levels = size.bit_length()  # log2(size) + 1 nodes from a leaf to the root
    ancestors = leaves[:, None] >> torch.arange(levels, device=first.device)
    return HeldTree(torch.cat([empty, *versions]), torch.cat([empty, *nodes]), ancestors, 2 * size)


def held_intervals(index: Tensor, versions: int) -> tuple[Tensor, Tensor]:
    """``first (V,)`` and ``end (V,)``: the timesteps ``[first, end)`` during which each of ``versions``
    versions is held in ``index (L, N)`` (a version is held over one interval; never held:
    ``first = L, end = 0``)."""
    steps = index.shape[0]
    t = torch.arange(steps, device=index.device)[:, None].expand_as(index).reshape(-1)
    flat = index.reshape(-1)
    first = torch.full((versions,), steps, dtype=torch.long, device=index.device)
    last = torch.full((versions,), -1, dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, flat, t, "amin"), last.scatter_reduce(0, flat, t, "amax") + 1


def pack(trees: list[HeldTree], sizes: list[int]) -> HeldTree:
    """One tree for several tables, the ``k``-th of ``sizes[k]`` versions: versions, nodes and
    timesteps numbered after those of the tables before it."""
    version_offset, node_offset = 0, 0
    versions, nodes, ancestors = [], [], []
    for tree, size in zip(trees, sizes, strict=True):
        versions.append(tree.version + version_offset)
        nodes.append(tree.node + node_offset)
        ancestors.append(tree.ancestors + node_offset)
        version_offset += size
        node_offset += tree.nodes
    width = max(a.shape[1] for a in ancestors)  # shorter paths: pad with an empty node
    empty = node_offset
    ancestors = [torch.nn.functional.pad(a, (0, width - a.shape[1]), value=empty) for a in ancestors]
    return HeldTree(torch.cat(versions), torch.cat(nodes), torch.cat(ancestors), node_offset + 1)


def held_softmax(x: Tensor, values: Tensor, tree: HeldTree) -> tuple[Tensor, Tensor]:
    r"""For each timestep ``t``: :math:`\text{lse}_t` ``(L,)`` and the softmax-weighted mean of
    ``values (V, k)`` ``(L, k)`` over the versions the tree holds at ``t`` (module docstring).

    ``x`` is ``(V,)``. Every timestep must hold at least one version.
    """
    v, node = tree.version, tree.node
    steps, levels = tree.ancestors.shape
    up = tree.ancestors.reshape(-1)
    xs = x.index_select(0, v)  # index_select: its backward is ~2x faster than indexing's on CPU
    shift = x.new_full((tree.nodes,), float("-inf"))
    shift = shift.scatter_reduce(0, node, xs.detach(), "amax")  # each node's largest x (no gradient)
    weight = torch.exp(xs - shift[node])  # <= 1
    sums = x.new_zeros(tree.nodes).index_add(0, node, weight)
    moments = values.new_zeros(tree.nodes, values.shape[1])
    moments = moments.index_add(0, node, weight[:, None] * values.index_select(0, v))
    path = shift[up].view(steps, levels)  # (L, A), -inf for nodes that hold nothing
    top = path.max(dim=-1).values  # (L,)
    scale = torch.exp(path - top[:, None])  # (L, A)
    total = (sums.index_select(0, up).view(steps, levels) * scale).sum(
        -1
    )  # >= 1: ``top``'s node holds exp(0)
    mean = torch.bmm(scale[:, None], moments.index_select(0, up).view(steps, levels, -1))[:, 0]
    return total.log() + top, mean / total[:, None]
