"""Exact path-dependent TreeSHAP for LightGBM boosters, vectorised over rows with numpy.

The values are those of LightGBM's ``pred_contrib`` (and ``shap.TreeExplainer`` with
``feature_perturbation="tree_path_dependent"``), categorical splits and missing-value
directions included, at a fraction of the cost.

Why it is fast (the idea of WOODELF and of "decision patterns")
    Merge the splits on one feature along a leaf's path: the leaf then depends on ``d`` unique
    features, each with a *zero fraction* ``z`` (the share of training rows that follow the
    path's splits on that feature: the product of child / parent counts) and a *one fraction*
    ``o(x)`` (1 when the row ``x`` follows all of them, else 0). Path-dependent TreeSHAP gives
    feature ``i`` of that path

        phi_i = v * (o_i - z_i) * sum_{S in U minus i} w(|S|, d) prod_{j in S} o_j
                                   prod_{j in U minus S minus i} z_j,
        w(s, d) = s! (d - s - 1)! / d!,

    which depends on the row only through the ``d`` bits ``o``: the leaf's *pattern*. Every
    leaf's ``2^d x d`` table of values is computed once per booster; explaining a row is then
    a comparison per split, an AND per (leaf, feature), a table lookup per (leaf, feature) and
    a sum per feature, all as whole-array numpy operations over a block of rows.

Split decisions follow LightGBM's own (``tree.h``): numerical ``x <= threshold`` goes left,
NaN is read as 0 unless the missing type is NaN, the missing values of the split's missing
type follow ``default_left``; categorical splits send a row left when its integer category is
in the split's set, and NaN or negative values right.

A leaf with more than ``MAX_PATTERN_BITS`` unique features on its path would need too large a
table: such a booster is explained by LightGBM's ``pred_contrib`` instead
(:func:`explainer_for` returns ``None``).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

MAX_PATTERN_BITS = 14
"""Beyond this many unique features on one leaf's path the tables (``2^d x d`` values per
leaf) cost more memory than they save time."""
_ZERO_THRESHOLD = 1e-35
"""LightGBM's ``kZeroThreshold``: what counts as zero for the ``Zero`` missing type."""
_BLOCK_CELLS = 4_000_000
"""Rows are explained in blocks of about this many (row, path entry) cells (tens of MB)."""

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
    cat_nodes: NDArray[np.intp]
    cat_left: NDArray[np.bool_]  # [categorical node, category code] -> goes left
    # Path entries (leaf, unique feature, split), grouped by slot (leaf, unique feature).
    entry_node: NDArray[np.intp]
    entry_left: NDArray[np.bool_]
    slot_starts: NDArray[np.intp]
    slot_weight: NDArray[np.int64]  # 2^(bit of the slot's feature in its leaf's pattern)
    leaf_starts: NDArray[np.intp]  # slots of each leaf
    # Table lookups in feature order: slot, its leaf and the offset of its table.
    lookup_leaf: NDArray[np.intp]
    lookup_slot: NDArray[np.intp]
    lookup_offset: NDArray[np.int64]
    feature_starts: NDArray[np.intp]
    features_used: NDArray[np.intp]
    table: NDArray[np.float64]

    @property
    def mean_path_features(self) -> float:
        """Unique features per leaf path, on average (the table lookups per leaf)."""
        return self.slot_weight.size / max(self.leaf_starts.size, 1)

    def contributions(self, matrix: NDArray[np.float64], threads: int = 1) -> NDArray[np.float64]:
        """SHAP values of each row of ``matrix`` (the float matrix the booster reads):
        ``n_features`` columns plus the bias, as ``booster.predict(pred_contrib=True)``.
        ``threads`` > 1 splits the rows between threads (the kernel releases the GIL)."""
        kernel = _kernel()
        if kernel is None:
            return self.contributions_numpy(matrix)
        x = np.ascontiguousarray(self._checked(matrix))
        out = np.zeros((x.shape[0], self.n_features + 1))
        out[:, -1] = self.bias
        if self.entry_node.size == 0 or x.shape[0] == 0:
            return out
        args = self._kernel_args
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

    @functools.cached_property
    def _kernel_args(self) -> tuple[NDArray[Any], ...]:
        cat_row = np.full(self.node_feature.size, -1, dtype=np.intp)
        cat_row[self.cat_nodes] = np.arange(self.cat_nodes.size)
        n_slots = self.slot_weight.size
        slot_feature = np.empty(n_slots, dtype=np.intp)
        slot_offset = np.empty(n_slots, dtype=np.int64)
        # The lookups are stored in feature order; the kernel walks slots in leaf order.
        per_feature = np.diff(np.append(self.feature_starts, n_slots))
        slot_feature[self.lookup_slot] = np.repeat(self.features_used, per_feature)
        slot_offset[self.lookup_slot] = self.lookup_offset
        # Leaf-major tables: a leaf's d values for one pattern side by side (one cache line).
        leaf_bounds = np.append(self.leaf_starts, n_slots).astype(np.intp)
        depth = np.diff(leaf_bounds)
        sizes = depth * (1 << depth)
        leaf_offset = np.zeros(depth.size, dtype=np.int64)
        leaf_offset[1:] = np.cumsum(sizes)[:-1]
        table = np.empty(int(sizes.sum()))
        for leaf in range(depth.size):
            d, first = int(depth[leaf]), int(leaf_bounds[leaf])
            block = np.stack(
                [
                    self.table[slot_offset[first + k] : slot_offset[first + k] + (1 << d)]
                    for k in range(d)
                ],
                axis=1,
            )
            table[leaf_offset[leaf] : leaf_offset[leaf] + block.size] = block.reshape(-1)
        return (
            self.node_feature,
            self.node_threshold,
            self.node_missing,
            self.node_default_left,
            cat_row,
            self.cat_left,
            self.entry_node,
            self.entry_left,
            np.append(self.slot_starts, self.entry_node.size).astype(np.intp),
            leaf_bounds,
            slot_feature,
            leaf_offset,
            table,
        )

    def contributions_numpy(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """:meth:`contributions` by whole-array numpy operations only (no compiled kernel)."""
        x = self._checked(matrix)
        out = np.zeros((x.shape[0], self.n_features + 1))
        out[:, -1] = self.bias
        if self.entry_node.size == 0 or x.shape[0] == 0:
            return out
        block = max(1, _BLOCK_CELLS // self.entry_node.size)
        for start in range(0, x.shape[0], block):
            rows = slice(start, start + block)
            out[rows, self.features_used] = self._explain_block(x[rows])
        return out

    def _checked(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"contributions: expected a matrix with {self.n_features} columns, "
                f"got shape {x.shape}"
            )
        return x

    def _goes_left(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        values = x[:, self.node_feature]
        nan = np.isnan(values)
        missing = self.node_missing
        # NaN reads as 0 unless NaN is the split's missing type.
        values = np.where(nan & (missing != _MISSING_NAN), 0.0, values)
        with np.errstate(invalid="ignore"):
            left = values <= self.node_threshold
        is_missing = ((missing == _MISSING_ZERO) & (np.abs(values) <= _ZERO_THRESHOLD)) | (
            (missing == _MISSING_NAN) & nan
        )
        left = np.where(is_missing, self.node_default_left, left)
        if self.cat_nodes.size:
            codes = x[:, self.node_feature[self.cat_nodes]]
            width = self.cat_left.shape[1]
            valid = np.isfinite(codes) & (codes >= 0) & (codes < width)
            index = np.where(valid, codes, 0).astype(np.intp)
            rows = np.arange(self.cat_nodes.size)[None, :]
            left[:, self.cat_nodes] = valid & self.cat_left[rows, index]
        return left

    def _explain_block(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        left = self._goes_left(x)
        follows = left[:, self.entry_node] == self.entry_left
        ones = np.logical_and.reduceat(follows, self.slot_starts, axis=1)
        pattern = np.add.reduceat(ones * self.slot_weight, self.leaf_starts, axis=1)
        values = self.table[pattern[:, self.lookup_leaf] + self.lookup_offset]
        return np.add.reduceat(values, self.feature_starts, axis=1)


# ------------------------------------------------------------------------------ the kernel


def _explain_rows(
    x: Any,
    out: Any,
    node_feature: Any,
    threshold: Any,
    missing: Any,
    default_left: Any,
    cat_row: Any,
    cat_left: Any,
    entry_node: Any,
    entry_left: Any,
    slot_bounds: Any,
    leaf_bounds: Any,
    slot_feature: Any,
    leaf_offset: Any,
    table: Any,
) -> None:  # pragma: no cover - compiled by numba; the numpy path is the same maths
    """Per row: every split's decision, every leaf's pattern, one table lookup per slot."""
    n_nodes = node_feature.shape[0]
    n_leaves = leaf_bounds.shape[0] - 1
    width = cat_left.shape[1]
    left = np.empty(n_nodes, dtype=np.bool_)
    for r in range(x.shape[0]):
        for k in range(n_nodes):
            value = x[r, node_feature[k]]
            if cat_row[k] >= 0:
                if np.isnan(value) or value < 0 or value >= width:
                    left[k] = False
                else:
                    left[k] = cat_left[cat_row[k], int(value)]
                continue
            kind = missing[k]
            nan = np.isnan(value)
            if nan and kind != 2:
                value = 0.0
            if (kind == 1 and abs(value) <= 1e-35) or (kind == 2 and nan):
                left[k] = default_left[k]
            else:
                left[k] = value <= threshold[k]
        for leaf in range(n_leaves):
            first = leaf_bounds[leaf]
            last = leaf_bounds[leaf + 1]
            pattern = 0
            for s in range(first, last):
                follows = 1
                for e in range(slot_bounds[s], slot_bounds[s + 1]):
                    follows &= left[entry_node[e]] == entry_left[e]
                pattern |= follows << (s - first)
            base = leaf_offset[leaf] + pattern * (last - first)
            for s in range(first, last):
                out[r, slot_feature[s]] += table[base + s - first]


@functools.cache
def _kernel() -> Any:
    """The row kernel compiled by numba (about a second, once per process); ``None`` without
    numba, and the numpy path explains instead."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; kept for minimal installs
        return None
    return numba.njit(nogil=True, cache=False)(_explain_rows)


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


def _shapley_weights(d: int) -> NDArray[np.float64]:
    return np.array(
        [math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)]
    )


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
    weights = _shapley_weights(d)
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
    """Compile ``booster.dump_model()``; ``None`` when a leaf's path has more than
    ``MAX_PATTERN_BITS`` unique features, or the model is not a single-output model."""
    if int(model.get("num_tree_per_iteration", 1)) != 1:
        return None
    n_features = int(model["max_feature_idx"]) + 1
    nodes: list[dict[str, Any]] = []
    leaves: list[_Leaf] = []
    bias = 0.0
    for tree in model["tree_info"]:
        bias += _expected_value(tree)
        _walk(tree, nodes, leaves)
    leaves = [leaf for leaf in leaves if leaf.features]
    if any(len(leaf.features) > MAX_PATTERN_BITS for leaf in leaves):
        return None

    node_feature = np.array([n["split_feature"] for n in nodes], dtype=np.intp)
    is_cat = np.array([n["decision_type"] == "==" for n in nodes], dtype=bool)
    threshold = np.array(
        [np.inf if cat else float(n["threshold"]) for n, cat in zip(nodes, is_cat, strict=True)]
    )
    missing = np.array([_MISSING_TYPES[n["missing_type"]] for n in nodes], dtype=np.int8)
    default_left = np.array([bool(n["default_left"]) for n in nodes], dtype=bool)
    cat_nodes = np.flatnonzero(is_cat)
    sets = [[int(c) for c in str(nodes[k]["threshold"]).split("||")] for k in cat_nodes]
    width = max((max(s) for s in sets), default=-1) + 1
    cat_left = np.zeros((cat_nodes.size, max(width, 1)), dtype=bool)
    for row, members in enumerate(sets):
        cat_left[row, members] = True

    # Slots (leaf, unique feature) in leaf order; the path entries of each slot together.
    entry_node: list[int] = []
    entry_left: list[bool] = []
    slot_starts: list[int] = []
    slot_weight: list[int] = []
    slot_feature: list[int] = []
    slot_leaf: list[int] = []
    leaf_starts: list[int] = []
    for number, leaf in enumerate(leaves):
        leaf_starts.append(len(slot_weight))
        for slot, feature in enumerate(leaf.features):
            slot_starts.append(len(entry_node))
            slot_weight.append(1 << slot)
            slot_feature.append(feature)
            slot_leaf.append(number)
            for node, goes_left, at in leaf.entries:
                if at == slot:
                    entry_node.append(node)
                    entry_left.append(goes_left)

    # One table block per slot: phi of the slot's feature for each pattern of its leaf.
    table_parts: list[NDArray[np.float64]] = []
    slot_offset = np.zeros(len(slot_weight), dtype=np.int64)
    offset = 0
    by_depth: dict[int, list[int]] = {}
    for number, leaf in enumerate(leaves):
        by_depth.setdefault(len(leaf.features), []).append(number)
    tables: dict[int, NDArray[np.float64]] = {}
    for members in by_depth.values():
        values = np.array([leaves[m].value for m in members])
        zero = np.array([leaves[m].zero for m in members])
        phi = pattern_tables(values, zero)
        for row, m in enumerate(members):
            tables[m] = phi[row]
    for number, leaf in enumerate(leaves):
        phi = tables[number]
        first = leaf_starts[number]
        for slot in range(len(leaf.features)):
            slot_offset[first + slot] = offset
            table_parts.append(phi[:, slot])
            offset += phi.shape[0]

    feature_of_slot = np.array(slot_feature, dtype=np.intp)
    order = np.argsort(feature_of_slot, kind="stable")
    sorted_features = feature_of_slot[order]
    used, starts = np.unique(sorted_features, return_index=True)
    return TreeShapExplainer(
        n_features=n_features,
        bias=bias,
        node_feature=node_feature,
        node_threshold=threshold,
        node_missing=missing,
        node_default_left=default_left,
        cat_nodes=cat_nodes,
        cat_left=cat_left,
        entry_node=np.array(entry_node, dtype=np.intp),
        entry_left=np.array(entry_left, dtype=bool),
        slot_starts=np.array(slot_starts, dtype=np.intp),
        slot_weight=np.array(slot_weight, dtype=np.int64),
        leaf_starts=np.array(leaf_starts, dtype=np.intp),
        lookup_leaf=np.array(slot_leaf, dtype=np.intp)[order],
        lookup_slot=order.astype(np.intp),
        lookup_offset=slot_offset[order],
        feature_starts=starts.astype(np.intp),
        features_used=used.astype(np.intp),
        table=np.concatenate(table_parts) if table_parts else np.zeros(0),
    )


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
