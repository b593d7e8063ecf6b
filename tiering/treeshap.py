"""Exact path-dependent TreeSHAP for LightGBM boosters, compiled per booster and run by a
numba kernel over the rows.

The values are those of LightGBM's ``pred_contrib`` (and ``shap.TreeExplainer`` with
``feature_perturbation="tree_path_dependent"``), categorical splits and missing-value
directions included, several times faster.

Why it is fast (the idea of WOODELF, Linear TreeSHAP and "decision patterns")
    Merge the splits on one feature along a leaf's path: the leaf then depends on ``d`` unique
    features, each with a *zero fraction* ``z`` (the share of training rows that follow the
    path's splits on that feature: the product of child / parent counts) and a *one fraction*
    ``o(x)`` (1 when the row ``x`` follows all of them, else 0). Path-dependent TreeSHAP gives
    feature ``i`` of that path

        phi_i = v * (o_i - z_i) * sum_{S in U minus i} w(|S|, d) prod_{j in S} o_j
                                   prod_{j in U minus S minus i} z_j,
        w(s, d) = s! (d - s - 1)! / d!.

    Since ``o`` is 0 or 1, the features the row does not follow (set ``B``) only contribute
    the constant factors ``z_j``, and the sum is ``prod_{B minus i} z_j`` times the weighted
    coefficients of ``prod_{A minus i} (t + z_j)`` over the features it follows (set ``A``).
    Per leaf and row that is one polynomial of degree ``|A|`` (usually 1-3, the path's length
    only for the leaf the row reaches), one synthetic division per feature of ``A`` and one
    shared sum for all of ``B``: ``O(|A|^2 + d)`` instead of TreeSHAP's ``O(d^2)`` recursion
    with its path copies.

    For the short paths boosted trees have (``d <= TABLE_MAX_FEATURES``) the value depends on
    the row only through its *pattern*, the bit mask of which path features it follows, so
    each leaf gets a table ``[path feature][pattern]`` computed once at compile time, and a
    row's contribution to a path feature is one lookup.

How the kernel walks the rows
    Rows go through the model in blocks of ``BLOCK_ROWS``, tree by tree. For one block and
    tree it first takes every split decision of the tree for every row (one vectorised pass
    per split node over the block's transposed features), then per leaf builds each row's
    pattern from those decisions and adds the table's values into per-feature sums. All the
    inner loops run over the rows of the block, contiguous in memory, so they vectorise, and
    nothing depends on the path a single row took. Longer paths fall back to the polynomial,
    row by row.

Split decisions follow LightGBM's own (``tree.h``): numerical ``x <= threshold`` goes left,
NaN is read as 0 unless the missing type is NaN, the missing values of the split's missing
type follow ``default_left``; categorical splits send a row left when its integer category is
in the split's set, and NaN or negative values right.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

_ZERO_THRESHOLD = 1e-35
"""LightGBM's ``kZeroThreshold``: what counts as zero for the ``Zero`` missing type."""
TABLE_MAX_FEATURES = 8
"""Leaves with at most this many features on their path get a table of their values for every
pattern of followed / not followed (``2^d x d`` values, at most 16 KiB): one lookup per feature
instead of the polynomial. Longer paths, rare, are computed row by row."""
BLOCK_ROWS = 256
"""Rows the kernel takes through the trees together: enough for its inner loops over rows to
be vectorised, few enough that a block's decisions, features and sums stay in the CPU's cache."""
_MIN_ROWS_PER_THREAD = 2_000
"""Fewer rows than this per thread cost more in starting threads than they save."""

_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2
_MISSING_TYPES = {"None": _MISSING_NONE, "Zero": _MISSING_ZERO, "NaN": _MISSING_NAN}


@dataclass(frozen=True)
class _Leaf:
    value: float
    features: list[int]
    zero: list[float]
    entries: list[tuple[int, bool, int]]  # (node, goes left, unique-feature slot on the path)


@dataclass(frozen=True)
class TreeShapExplainer:
    """A booster compiled for :meth:`contributions`; build it with :func:`compile_booster`."""

    n_features: int
    bias: float
    # Split nodes of all trees.
    node_feature: NDArray[np.intp]
    node_threshold: NDArray[np.float64]
    node_missing: NDArray[np.int8]
    node_default_left: NDArray[np.bool_]
    node_cat_row: NDArray[np.intp]  # row of cat_left, -1 for a numerical split
    cat_left: NDArray[np.bool_]  # [categorical split, category code] -> goes left
    tree_nodes: NDArray[np.intp]  # tree t's split nodes: tree_nodes[t] to tree_nodes[t + 1]
    tree_leaves: NDArray[np.intp]  # tree t's leaves, likewise
    # Path entries (split, direction) grouped by slot (leaf, unique feature), slots by leaf.
    entry_node: NDArray[np.intp]
    entry_left: NDArray[np.bool_]
    slot_bounds: NDArray[np.intp]
    slot_feature: NDArray[np.intp]
    slot_zero: NDArray[np.float64]
    leaf_bounds: NDArray[np.intp]
    leaf_value: NDArray[np.float64]
    weights: NDArray[np.float64]  # weights[d, s] = s! (d - s - 1)! / d!
    leaf_table: NDArray[np.int64]  # offset of the leaf's table, -1 for a long path
    table: NDArray[np.float64]  # per leaf: [path feature, pattern] values, leaf by leaf

    @property
    def mean_path_features(self) -> float:
        """Unique features per leaf path, on average."""
        return self.slot_feature.size / max(self.leaf_value.size, 1)

    def contributions(self, matrix: NDArray[np.float64], threads: int = 1) -> NDArray[np.float64]:
        """SHAP values of each row of ``matrix`` (the float matrix the booster reads):
        ``n_features`` columns plus the bias, as ``booster.predict(pred_contrib=True)``.
        ``threads`` > 1 splits the rows between threads (the kernel releases the GIL)."""
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"contributions: expected a matrix with {self.n_features} columns, "
                f"got shape {x.shape}"
            )
        x = np.ascontiguousarray(x)
        out = np.zeros((x.shape[0], self.n_features + 1))
        out[:, -1] = self.bias
        if self.leaf_value.size == 0 or x.shape[0] == 0:
            return out
        kernel, args = _kernel(), self.kernel_args()
        parts = min(max(threads, 1), max(x.shape[0] // _MIN_ROWS_PER_THREAD, 1))
        if parts == 1:
            kernel(x, out, *args)
            return out
        bounds = np.linspace(0, x.shape[0], parts + 1).astype(int)
        with ThreadPoolExecutor(parts) as pool:
            done = [
                pool.submit(kernel, x[a:b], out[a:b], *args)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            for future in done:
                future.result()
        return out

    def kernel_args(self) -> tuple[Any, ...]:
        """The arrays :func:`explain_rows` reads after ``x`` and ``out``."""
        return (
            self.node_feature,
            self.node_threshold,
            self.node_missing,
            self.node_default_left,
            self.node_cat_row,
            self.cat_left,
            self.tree_nodes,
            self.tree_leaves,
            self.entry_node,
            self.entry_left,
            self.slot_bounds,
            self.slot_feature,
            self.slot_zero,
            self.leaf_bounds,
            self.leaf_value,
            self.weights,
            self.leaf_table,
            self.table,
        )


# ------------------------------------------------------------------------------ the kernel


def explain_rows(
    x: Any,
    out: Any,
    node_feature: Any,
    threshold: Any,
    missing: Any,
    default_left: Any,
    cat_row: Any,
    cat_left: Any,
    tree_nodes: Any,
    tree_leaves: Any,
    entry_node: Any,
    entry_left: Any,
    slot_bounds: Any,
    slot_feature: Any,
    slot_zero: Any,
    leaf_bounds: Any,
    leaf_value: Any,
    weights: Any,
    leaf_table: Any,
    table: Any,
) -> None:
    """Add each row's SHAP values to ``out`` (plain Python; :func:`_kernel` compiles it).

    Rows go through in blocks of ``BLOCK_ROWS``, tree by tree: every split's decision for the
    whole block, then per leaf the pattern of path features each row follows and one table
    lookup per path feature, each an inner loop over the block's rows that the compiler
    vectorises. Leaves with longer paths than the tables hold take the sums of the module
    docstring row by row."""
    n_rows, n_features = x.shape
    n_trees = tree_nodes.shape[0] - 1
    width = cat_left.shape[1]
    max_d = weights.shape[0] - 1
    max_nodes = 1
    for t in range(n_trees):
        max_nodes = max(max_nodes, tree_nodes[t + 1] - tree_nodes[t])
    block = BLOCK_ROWS
    left = np.empty((max_nodes, block), dtype=np.uint8)
    xt = np.empty((n_features, block))
    acc = np.empty((n_features, block))
    pattern = np.empty(block, dtype=np.intp)
    ok = np.empty(block, dtype=np.uint8)
    follows = np.empty(max_d + 1, dtype=np.bool_)
    poly = np.empty(max_d + 2)
    for start in range(0, n_rows, block):
        m = min(block, n_rows - start)
        for f in range(n_features):
            for r in range(m):
                xt[f, r] = x[start + r, f]
                acc[f, r] = 0.0
        for t in range(n_trees):
            n0 = tree_nodes[t]
            for k in range(n0, tree_nodes[t + 1]):
                row = left[k - n0]
                column = xt[node_feature[k]]
                if cat_row[k] >= 0:
                    members = cat_left[cat_row[k]]
                    for r in range(m):
                        value = column[r]
                        if np.isnan(value) or value < 0 or value >= width:
                            row[r] = 0
                        else:
                            row[r] = members[int(value)]
                    continue
                kind = missing[k]
                cut = threshold[k]
                default = 1 if default_left[k] else 0
                for r in range(m):
                    value = column[r]
                    nan = np.isnan(value)
                    if nan and kind != 2:
                        value = 0.0
                    if (kind == 1 and abs(value) <= _ZERO_THRESHOLD) or (kind == 2 and nan):
                        row[r] = default
                    else:
                        row[r] = 1 if value <= cut else 0
            for leaf in range(tree_leaves[t], tree_leaves[t + 1]):
                first = leaf_bounds[leaf]
                d = leaf_bounds[leaf + 1] - first
                if leaf_table[leaf] >= 0:
                    # A short path: one lookup per path feature in the leaf's table.
                    for r in range(m):
                        pattern[r] = 0
                    for j in range(d):
                        s = first + j
                        for r in range(m):
                            ok[r] = 1
                        for e in range(slot_bounds[s], slot_bounds[s + 1]):
                            decided = left[entry_node[e] - n0]
                            flip = 0 if entry_left[e] else 1
                            for r in range(m):
                                ok[r] &= decided[r] ^ flip
                        for r in range(m):
                            pattern[r] |= np.intp(ok[r]) << j
                    size = 1 << d
                    for j in range(d):
                        values = table[
                            leaf_table[leaf] + j * size : leaf_table[leaf] + (j + 1) * size
                        ]
                        target = acc[slot_feature[first + j]]
                        for r in range(m):
                            target[r] += values[pattern[r]]
                    continue
                v = leaf_value[leaf]
                for r in range(m):
                    # Which path features the row follows, and prod_{j in A} (t + z_j).
                    poly[0] = 1.0
                    degree = 0
                    for j in range(d):
                        s = first + j
                        follow = True
                        for e in range(slot_bounds[s], slot_bounds[s + 1]):
                            if (left[entry_node[e] - n0, r] == 1) != entry_left[e]:
                                follow = False
                                break
                        follows[j] = follow
                        if follow:
                            z = slot_zero[s]
                            poly[degree + 1] = poly[degree]
                            for q in range(degree, 0, -1):
                                poly[q] = poly[q - 1] + z * poly[q]
                            poly[0] = z * poly[0]
                            degree += 1
                    # Every feature of B gets the same value: z_i times the product of z over
                    # the rest of B is the product over all of B, whatever z_i (even 0).
                    p = 1.0
                    for j in range(d):
                        if not follows[j]:
                            p *= slot_zero[first + j]
                    w_all = 0.0
                    for q in range(degree + 1):
                        w_all += weights[d, q] * poly[q]
                    shared = v * p * w_all
                    for j in range(d):
                        s = first + j
                        if not follows[j]:
                            acc[slot_feature[s], r] -= shared
                            continue
                        # prod_{A minus i} (t + z_j): divide (t + z_i) out, from the top.
                        z = slot_zero[s]
                        quotient = poly[degree]
                        total = weights[d, degree - 1] * quotient
                        for q in range(degree - 1, 0, -1):
                            quotient = poly[q] - z * quotient
                            total += weights[d, q - 1] * quotient
                        acc[slot_feature[s], r] += v * (1.0 - z) * p * total
        for r in range(m):
            for f in range(n_features):
                out[start + r, f] += acc[f, r]


def compile_cache_dir() -> Path:
    """Where numba keeps the compiled kernel between processes: ``NUMBA_CACHE_DIR`` when set,
    else the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``), never the
    installed package."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "account-tiering" / "numba"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@functools.cache
def _kernel() -> Any:
    """:func:`explain_rows` compiled by numba: a few seconds the first time, then loaded from
    :func:`compile_cache_dir` by every later process (workers, servers, each CLI run). Without
    a writable cache folder it is compiled once per process."""
    import numba

    folder = compile_cache_dir()
    if not _writable(folder):
        return numba.njit(nogil=True, cache=False)(explain_rows)
    numba.config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]
    return numba.njit(nogil=True, cache=True)(explain_rows)


# --------------------------------------------------------------------------------- compiling


def _walk(tree: dict[str, Any], nodes: list[dict[str, Any]], leaves: list[_Leaf]) -> None:
    """Collect the split nodes (numbered in ``nodes``) and the leaves with their merged paths."""
    root = tree["tree_structure"]
    if "split_index" not in root:
        return
    # (node dict, path so far: list of (node number, goes left, feature, zero fraction))
    stack: list[tuple[dict[str, Any], list[tuple[int, bool, int, float]]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if "split_index" not in node:
            features: list[int] = []
            zero: list[float] = []
            entries: list[tuple[int, bool, int]] = []
            for number, goes_left, feature, fraction in path:
                if feature in features:
                    slot = features.index(feature)
                    zero[slot] *= fraction
                else:
                    slot = len(features)
                    features.append(feature)
                    zero.append(fraction)
                entries.append((number, goes_left, slot))
            leaves.append(_Leaf(float(node["leaf_value"]), features, zero, entries))
            continue
        number = len(nodes)
        nodes.append(node)
        parent = float(node["internal_count"])
        for child, goes_left in ((node["left_child"], True), (node["right_child"], False)):
            count = float(child.get("internal_count", child.get("leaf_count", 0)))
            fraction = count / parent if parent > 0 else 0.0
            stack.append(
                (child, [*path, (number, goes_left, int(node["split_feature"]), fraction)])
            )


def _expected_value(tree: dict[str, Any]) -> float:
    root = tree["tree_structure"]
    if "split_index" not in root:
        return float(root["leaf_value"])
    total = float(root["internal_count"])
    value, stack = 0.0, [root]
    while stack:
        node = stack.pop()
        if "split_index" in node:
            stack.extend((node["left_child"], node["right_child"]))
        else:
            value += float(node["leaf_value"]) * float(node["leaf_count"]) / total
    return value


def _shapley_weights(max_d: int) -> NDArray[np.float64]:
    """``w[d, s] = s! (d - s - 1)! / d!`` for paths of up to ``max_d`` features (``w[d, d]``
    is 0: no subset of the other features has all d)."""
    w = np.zeros((max_d + 1, max_d + 1))
    for d in range(1, max_d + 1):
        for s in range(d):
            w[d, s] = math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
    return w


def pattern_tables(values: NDArray[np.float64], zero: NDArray[np.float64]) -> NDArray[np.float64]:
    """For leaves that share a path length ``d``: ``values`` (leaves,), ``zero`` (leaves, d)
    -> ``phi`` (leaves, 2^d, d): the SHAP value of the path's feature k for every pattern of
    one fractions (bit k of the pattern index is ``o_k``)."""
    n, d = zero.shape
    # Coefficients (by degree in t) of prod_k (o_k t + z_k) for every pattern, built one
    # feature at a time: bit k of the pattern index is o_k.
    full = np.zeros((n, 1, d + 1))
    full[:, 0, 0] = 1.0
    for k in range(d):
        z = zero[:, k, None, None]
        off = full * z
        on = off.copy()
        on[:, :, 1:] += full[:, :, :-1]
        full = np.concatenate([off, on], axis=1)
    weights = _shapley_weights(d)[d, :d]
    patterns = np.arange(2**d)
    out = np.empty((n, 2**d, d))
    for i in range(d):
        one = ((patterns >> i) & 1).astype(bool)
        z = zero[:, i, None]
        # Divide out feature i's factor: (t + z_i) where o_i = 1, z_i where o_i = 0.
        quotient = np.empty((n, 2**d, d))
        quotient[:, :, d - 1] = full[:, :, d]
        for s in range(d - 1, 0, -1):
            quotient[:, :, s - 1] = full[:, :, s] - z * quotient[:, :, s]
        with np.errstate(divide="ignore", invalid="ignore"):
            divided = full[:, :, :d] / z[:, :, None]
        quotient = np.where(one[None, :, None], quotient, divided)
        total = quotient @ weights
        out[:, :, i] = values[:, None] * (one[None, :] - z) * total
        zero_cover = zero[:, i] <= 0
        if zero_cover.any():
            out[zero_cover, :, i] = _direct(values[zero_cover], zero[zero_cover], i, weights)
    return out


def _direct(
    values: NDArray[np.float64], zero: NDArray[np.float64], i: int, weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Feature i's column of the tables without dividing by its zero fraction (when it is 0)."""
    n, d = zero.shape
    patterns = np.arange(2**d)
    poly = np.zeros((n, 2**d, d))
    poly[:, :, 0] = 1.0
    for k in range(d):
        if k == i:
            continue
        o = ((patterns >> k) & 1)[None, :, None].astype(float)
        z = zero[:, k, None, None]
        shifted = np.zeros_like(poly)
        shifted[:, :, 1:] = poly[:, :, :-1]
        poly = poly * z + shifted * o
    one = ((patterns >> i) & 1).astype(float)
    return values[:, None] * (one[None, :] - zero[:, i, None]) * (poly @ weights)


def compile_model(model: dict[str, Any]) -> TreeShapExplainer | None:
    """Compile ``booster.dump_model()``; ``None`` for a model of several outputs per
    iteration (multiclass), which LightGBM's ``pred_contrib`` explains instead."""
    if int(model.get("num_tree_per_iteration", 1)) != 1:
        return None
    n_features = int(model["max_feature_idx"]) + 1
    nodes: list[dict[str, Any]] = []
    leaves: list[_Leaf] = []
    tree_nodes, tree_leaves = [0], [0]
    bias = 0.0
    for tree in model["tree_info"]:
        bias += _expected_value(tree)
        grown: list[_Leaf] = []
        _walk(tree, nodes, grown)
        leaves.extend(leaf for leaf in grown if leaf.features)
        if len(nodes) > tree_nodes[-1]:
            tree_nodes.append(len(nodes))
            tree_leaves.append(len(leaves))

    is_cat = np.array([n["decision_type"] == "==" for n in nodes], dtype=bool)
    cat_nodes = np.flatnonzero(is_cat)
    sets = [[int(c) for c in str(nodes[k]["threshold"]).split("||")] for k in cat_nodes]
    width = max((max(s) for s in sets), default=-1) + 1
    cat_left = np.zeros((cat_nodes.size, max(width, 1)), dtype=bool)
    for row, members in enumerate(sets):
        cat_left[row, members] = True
    cat_row = np.full(len(nodes), -1, dtype=np.intp)
    cat_row[cat_nodes] = np.arange(cat_nodes.size)

    entry_node: list[int] = []
    entry_left: list[bool] = []
    slot_bounds: list[int] = []
    slot_feature: list[int] = []
    slot_zero: list[float] = []
    leaf_bounds: list[int] = []
    for leaf in leaves:
        leaf_bounds.append(len(slot_feature))
        for slot, feature in enumerate(leaf.features):
            slot_bounds.append(len(entry_node))
            slot_feature.append(feature)
            slot_zero.append(leaf.zero[slot])
            for node, goes_left, at in leaf.entries:
                if at == slot:
                    entry_node.append(node)
                    entry_left.append(goes_left)
    leaf_bounds.append(len(slot_feature))
    slot_bounds.append(len(entry_node))
    max_d = max((len(leaf.features) for leaf in leaves), default=0)
    leaf_table, table = _tables(leaves)
    return TreeShapExplainer(
        n_features=n_features,
        bias=bias,
        node_feature=np.array([n["split_feature"] for n in nodes], dtype=np.intp),
        node_threshold=np.array(
            [np.inf if c else float(n["threshold"]) for n, c in zip(nodes, is_cat, strict=True)]
        ),
        node_missing=np.array([_MISSING_TYPES[n["missing_type"]] for n in nodes], dtype=np.int8),
        node_default_left=np.array([bool(n["default_left"]) for n in nodes], dtype=bool),
        node_cat_row=cat_row,
        cat_left=cat_left,
        tree_nodes=np.array(tree_nodes, dtype=np.intp),
        tree_leaves=np.array(tree_leaves, dtype=np.intp),
        entry_node=np.array(entry_node, dtype=np.intp),
        entry_left=np.array(entry_left, dtype=bool),
        slot_bounds=np.array(slot_bounds, dtype=np.intp),
        slot_feature=np.array(slot_feature, dtype=np.intp),
        slot_zero=np.array(slot_zero, dtype=np.float64),
        leaf_bounds=np.array(leaf_bounds, dtype=np.intp),
        leaf_value=np.array([leaf.value for leaf in leaves], dtype=np.float64),
        weights=_shapley_weights(max_d),
        leaf_table=leaf_table,
        table=table,
    )


def _tables(leaves: list[_Leaf]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The pattern tables of the leaves with at most ``TABLE_MAX_FEATURES`` path features."""
    offsets = np.full(len(leaves), -1, dtype=np.int64)
    by_depth: dict[int, list[int]] = {}
    for number, leaf in enumerate(leaves):
        if len(leaf.features) <= TABLE_MAX_FEATURES:
            by_depth.setdefault(len(leaf.features), []).append(number)
    parts: list[NDArray[np.float64]] = []
    size = 0
    for d, members in sorted(by_depth.items()):
        values = np.array([leaves[m].value for m in members])
        zero = np.array([leaves[m].zero for m in members])
        # (leaves, d, 2^d): leaf-major, then path feature, so that one feature's values for
        # every pattern lie together for the kernel's lookups.
        phi = pattern_tables(values, zero).transpose(0, 2, 1).copy()
        for row, m in enumerate(members):
            offsets[m] = size + row * (d << d)
        parts.append(phi.reshape(-1))
        size += phi.size
    return offsets, np.concatenate(parts) if parts else np.zeros(0)


def compile_booster(booster: lgb.Booster) -> TreeShapExplainer | None:
    """Compile a booster for :meth:`TreeShapExplainer.contributions` (see
    :func:`compile_model`)."""
    return compile_model(booster.dump_model())


_compiled: weakref.WeakKeyDictionary[lgb.Booster, TreeShapExplainer | None] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def explainer_for(booster: lgb.Booster) -> TreeShapExplainer | None:
    """The booster's compiled explainer, compiled on first use and kept while the booster
    lives; ``None`` when only LightGBM's ``pred_contrib`` can explain it."""
    with _lock:
        if booster in _compiled:
            return _compiled[booster]
    compiled = compile_booster(booster)
    with _lock:
        _compiled[booster] = compiled
    return compiled


def contributions(
    booster: lgb.Booster, matrix: NDArray[np.float64], threads: int = 1
) -> NDArray[np.float64]:
    """SHAP values as ``booster.predict(matrix, pred_contrib=True)``, by the compiled tables
    when the booster allows them, else by LightGBM."""
    explainer = explainer_for(booster)
    if explainer is None:
        return np.asarray(
            booster.predict(matrix, pred_contrib=True, num_threads=threads), dtype=float
        )
    return explainer.contributions(matrix, threads=threads)


def warm_up(boosters: list[lgb.Booster]) -> None:
    """Compile the boosters and load the kernel now (under a second from the compile cache,
    a few seconds the first time on a machine), so that the first request to explain an
    account does not pay for it."""
    for booster in boosters:
        explainer = explainer_for(booster)
        if explainer is not None:
            explainer.contributions(np.zeros((1, explainer.n_features)))
