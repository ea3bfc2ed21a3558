"""Property-based fuzzing of the engine, the transforms, model files and data files.

* The engine never returns NaN for valid input (random structures with discrete and Gaussian leaves, shared
  sub-networks, random data with missing values, float32 and float64), and its gradients are finite.
* Random chains of transforms (overparametrize, collapse, induced trees, compile + to_structure, save + load) keep
  the function: the log-likelihood agrees in float64 on random inputs with missing values.
* Every random corruption of a valid structure, of valid data, of a model file or of a CSV file is rejected with
  an :class:`OverspnError` naming the problem, never an exception from deep inside numpy, torch or zipfile.

Structures come from a generator of this module (rather than the shared test strategies) because it also draws
Gaussian leaves and records which variables are continuous.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import overspn as osp
from overspn.data import load_csv
from overspn.errors import DataError, ModelFileError, OverspnError, StructureError

# ----------------------------------------------------------------------------------------------------------------
# Random valid structures
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spn:
    root: osp.Node
    cardinalities: tuple[int, ...]  # per variable: number of states the compiled model accepts; 0 = continuous

    @property
    def num_vars(self) -> int:
        return len(self.cardinalities)


@st.composite
def spns(draw: st.DrawFn, max_vars: int = 5, max_depth: int = 3, share: bool = True) -> Spn:
    """A valid SPN over variables 0..D-1, each discrete (2-4 states) or continuous (Gaussian leaves)."""
    num_vars = draw(st.integers(1, max_vars))
    states = [draw(st.sampled_from([0, 2, 2, 3, 4])) for _ in range(num_vars)]  # 0 = continuous
    weight = st.floats(0.05, 5.0)
    built: dict[frozenset[int], list[osp.Node]] = {}

    def unit(var: int) -> osp.Node:
        card = states[var]
        if card == 0:
            gaussians = [osp.Gaussian(var, draw(st.floats(-2, 2)), draw(st.floats(0.3, 3)))
                         for _ in range(draw(st.integers(1, 2)))]
            return gaussians[0] if len(gaussians) == 1 else osp.Sum(gaussians, [draw(weight) for _ in gaussians])
        kind = draw(st.sampled_from(["indicator", "bernoulli", "categorical", "indicator_sum", "indicator_sum"]))
        if kind == "indicator":
            return osp.Indicator(var, draw(st.integers(0, card - 1)))
        if kind == "bernoulli" and card == 2:
            return osp.Bernoulli(var, draw(st.floats(0.02, 0.98)))
        if kind == "categorical":
            probs = np.array([draw(st.floats(0.05, 1.0)) for _ in range(card)])
            return osp.Categorical(var, probs / probs.sum())
        return osp.Sum([osp.Indicator(var, value) for value in range(card)], [draw(weight) for _ in range(card)])

    def node(scope: list[int], depth: int) -> osp.Node:
        key = frozenset(scope)
        if share and built.get(key) and draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from(built[key]))
        if len(scope) == 1 and (depth >= max_depth or draw(st.booleans())):
            result = unit(scope[0])
        elif depth >= max_depth:
            result = osp.Product([unit(var) for var in scope])
        elif draw(st.booleans()):
            children = [node(scope, depth + 1) for _ in range(draw(st.integers(1, 3)))]
            result = osp.Sum(children, [draw(weight) for _ in children])
        elif len(scope) == 1:
            result = osp.Product([node(scope, depth + 1)])
        else:
            order = draw(st.permutations(scope))
            cuts = sorted(draw(st.sets(st.integers(1, len(scope) - 1), min_size=1)))
            parts = [sorted(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(scope)])]
            result = osp.Product([node(part, depth + 1) for part in parts])
        built.setdefault(key, []).append(result)
        return result

    root = node(list(range(num_vars)), 0)
    if not isinstance(root, osp.Sum):
        root = osp.Sum([root], [draw(weight)])
    cardinalities = [0] * num_vars
    for leaf in osp.topological_order(root):
        if isinstance(leaf, osp.Leaf) and leaf.is_discrete:
            cardinalities[leaf.var] = max(cardinalities[leaf.var], leaf.cardinality)  # type: ignore[attr-defined]
    return Spn(root, tuple(cardinalities))


def random_data(spn: Spn, seed: int, rows: int = 6, missing: float = 0.3) -> np.ndarray:
    """Valid rows for ``spn``: states of discrete variables, reals in [-5, 5] for continuous ones; some NaN."""
    rng = np.random.default_rng(seed)
    columns = [rng.integers(0, card, rows).astype(np.float64) if card else rng.uniform(-5, 5, rows)
               for card in spn.cardinalities]
    x = np.stack(columns, axis=1)
    x[rng.random(x.shape) < missing] = np.nan
    x[0] = np.nan  # an all-missing row: the partition function itself
    return x


def log_likelihood(root: osp.Node, x: np.ndarray, num_vars: int) -> np.ndarray:
    return osp.compile(root, dtype=torch.float64, num_vars=num_vars).log_likelihood(x).detach().numpy()


# ----------------------------------------------------------------------------------------------------------------
# The engine never returns NaN for valid input
# ----------------------------------------------------------------------------------------------------------------


@given(spn=spns(), seed=st.integers(0, 2**32 - 1), weights=st.sampled_from(["raw", "log", "softmax"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), fast=st.booleans())
def test_valid_input_never_gives_nan(spn: Spn, seed: int, weights: str, dtype: torch.dtype, fast: bool) -> None:
    model = osp.compile(spn.root, weights, dtype=dtype, num_vars=spn.num_vars, fast=fast)
    x = random_data(spn, seed)
    values = model.log_likelihood(x).detach()
    assert not torch.isnan(values).any(), values
    assert torch.isfinite(model.log_partition())
    assert abs(float(values[0])) < 1e-4  # the all-missing row has probability 1
    if not any(card == 0 for card in spn.cardinalities):
        assert (values[torch.isfinite(values)] <= 1e-4).all()  # probabilities of discrete data are at most 1
    completed = model.mpe(x)
    assert not torch.isnan(completed).any()
    drawn = model.sample(3, generator=torch.Generator().manual_seed(seed % 2**31))
    assert drawn.shape == (3, spn.num_vars) and not torch.isnan(drawn).any()
    assert not torch.isnan(model.log_likelihood(drawn)).any()


@given(spn=spns(), seed=st.integers(0, 2**32 - 1), weights=st.sampled_from(["raw", "log", "softmax"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), fast=st.booleans())
def test_gradients_are_finite_on_inputs_of_nonzero_probability(spn: Spn, seed: int, weights: str,
                                                                dtype: torch.dtype, fast: bool) -> None:
    """Sub-networks may be zero on a row (an indicator of another state) while the row has probability > 0."""
    model = osp.compile(spn.root, weights, dtype=dtype, num_vars=spn.num_vars, fast=fast)
    x = random_data(spn, seed, rows=10)
    possible = x[torch.isfinite(model.log_likelihood(x).detach()).numpy()]
    objective = model.log_likelihood(possible).mean()
    assert torch.isfinite(objective)
    objective.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


# ----------------------------------------------------------------------------------------------------------------
# Transform chains keep the function
# ----------------------------------------------------------------------------------------------------------------

TRANSFORMS = ("overparametrize", "collapse", "induced_trees", "to_structure", "save_load")


def factorisations(count: int) -> list[tuple[int, ...]]:
    """Every ordered factorisation of ``count`` into factors >= 2, plus (count,) and one with a factor 1."""
    found: list[tuple[int, ...]] = [(count,), (1, count)]

    def extend(rest: int, prefix: tuple[int, ...]) -> None:
        for factor in range(2, rest + 1):
            if rest % factor == 0:
                if factor == rest:
                    found.append((*prefix, factor))
                else:
                    extend(rest // factor, (*prefix, factor))

    extend(count, ())
    return sorted(set(found))


def apply(transform: str, root: osp.Node, num_vars: int, x: np.ndarray, draw: st.DrawFn, folder: Path
          ) -> tuple[osp.Node, np.ndarray | None]:
    """One transform; returns the new structure and, when the transform defines a new function, its values on x.

    Compiling with softmax weights normalises every sum's weights, which changes the distribution of a structure
    whose sums are not normalised; the structure read back is then compared with the softmax model itself.
    """
    if transform == "overparametrize":
        if not isinstance(root, osp.Sum):
            root = osp.Sum([root], [1.0])
        branching = draw(st.sampled_from(factorisations(len(root.children))))
        return osp.overparametrize(root, branching), None
    if transform == "collapse":
        return osp.collapse(root), None
    if transform == "induced_trees":
        return osp.induced_trees(root, limit=200, univariate_leaves=draw(st.booleans())), None
    weights = draw(st.sampled_from(["raw", "log", "softmax"]))
    model = osp.compile(root, weights, dtype=torch.float64, num_vars=num_vars, fast=draw(st.booleans()))
    redefined = model.log_likelihood(x).detach().numpy() if weights == "softmax" else None
    if transform == "to_structure":
        return model.to_structure(), redefined
    path = folder / "model.ospn"
    osp.save(model, path)
    loaded = osp.load(path)
    assert loaded.parametrisation == weights and loaded.dtype == torch.float64
    np.testing.assert_array_equal(loaded.log_likelihood(x).detach().numpy(), model.log_likelihood(x).detach().numpy())
    return loaded.to_structure(), redefined


@given(spn=spns(max_vars=4), chain=st.lists(st.sampled_from(TRANSFORMS), min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_transform_chains_keep_the_function(spn: Spn, chain: list[str], seed: int, data: st.DataObject) -> None:
    x = random_data(spn, seed, rows=8)
    expected = log_likelihood(spn.root, x, spn.num_vars)
    root = spn.root
    with tempfile.TemporaryDirectory() as folder:
        for transform in chain:
            try:
                root, redefined = apply(transform, root, spn.num_vars, x, data.draw, Path(folder))
            except StructureError as error:
                assert transform == "induced_trees" and "not a tree" in str(error)
                continue
            except osp.ConfigurationError as error:
                assert transform == "induced_trees" and "induced trees, more than limit" in str(error)
                continue
            if redefined is not None:
                expected = redefined
            osp.validate(root)
            np.testing.assert_allclose(log_likelihood(root, x, spn.num_vars), expected, rtol=1e-9, atol=1e-9,
                                       err_msg=f"after {transform} in {chain}")


@given(spn=spns(max_vars=4, share=False), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_overparametrize_then_collapse_restores_the_root_weights(spn: Spn, seed: int, data: st.DataObject) -> None:
    root = spn.root
    assert isinstance(root, osp.Sum)
    branching = data.draw(st.sampled_from(factorisations(len(root.children))))
    deep = osp.overparametrize(root, branching)
    collapsed = osp.collapse(deep)
    assert isinstance(collapsed, osp.Sum)
    flat = osp.collapse(root)  # the original's own chains of sums merged the same way
    assert isinstance(flat, osp.Sum)
    assert len(collapsed.children) == len(flat.children)
    np.testing.assert_allclose(sorted(collapsed.weights), sorted(flat.weights), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Corrupted structures are rejected
# ----------------------------------------------------------------------------------------------------------------

STRUCTURE_CORRUPTIONS = {
    # name: (nodes it applies to, the words the error must contain)
    "negative weight": ("sum", "negative weight"),
    "NaN weight": ("sum", "non-finite weight"),
    "infinite weight": ("sum", "non-finite weight"),
    "all weights zero": ("sum", "all weights are zero"),
    "extra weight": ("sum", "weights for"),
    "no children": ("inner", "no children"),
    "incomplete sum": ("sum", "not complete"),
    "overlapping product": ("product", "not decomposable"),
    "cycle": ("inner", "cycle"),
    "Bernoulli p out of range": ("bernoulli", "p must lie in (0, 1)"),
    "categorical probs not normalised": ("categorical", "probs must"),
    "Gaussian std not positive": ("gaussian", "std must be finite and > 0"),
    "Gaussian mean infinite": ("gaussian", "mean must be finite"),
}


def corrupt(name: str, target: osp.Node, spn: Spn, draw: st.DrawFn) -> None:
    """Break ``target`` in place in the way ``name`` says (nodes have no setters; the slots are writable)."""
    if name in ("negative weight", "NaN weight", "infinite weight", "all weights zero", "extra weight"):
        weights = np.array(target.weights)
        index = draw(st.integers(0, len(weights) - 1))
        if name == "negative weight":
            weights[index] = -draw(st.floats(1e-6, 10))
        elif name == "NaN weight":
            weights[index] = math.nan
        elif name == "infinite weight":
            weights[index] = draw(st.sampled_from([math.inf, -math.inf]))
        elif name == "all weights zero":
            weights[:] = 0.0
        else:
            weights = np.append(weights, 1.0)
        target.weights = weights
    elif name == "no children":
        target.children = ()
    elif name == "incomplete sum":
        stranger = osp.Indicator(spn.num_vars, 0)  # a variable in no other scope
        target.children = (*target.children, stranger)
        target.weights = np.append(target.weights, 1.0)
    elif name == "overlapping product":
        var = draw(st.sampled_from(sorted(target.scope)))
        target.children = (*target.children, osp.Gaussian(var) if spn.cardinalities[var] == 0
                           else osp.Indicator(var, 0))
    elif name == "cycle":
        below = [n for n in osp.topological_order(target) if isinstance(n, (osp.Sum, osp.Product))]
        inner = draw(st.sampled_from(below))
        inner.children = (*inner.children, target)
        if isinstance(inner, osp.Sum):
            inner.weights = np.append(inner.weights, 1.0)
    elif name == "Bernoulli p out of range":
        target.p = draw(st.sampled_from([0.0, 1.0, -0.5, 1.5, math.nan, math.inf]))
    elif name == "categorical probs not normalised":
        probs = np.array(target.probs)
        probs[draw(st.integers(0, len(probs) - 1))] = draw(st.sampled_from([-0.1, 0.0, 2.0, math.nan]))
        target.probs = probs
    elif name == "Gaussian std not positive":
        target.std = draw(st.sampled_from([0.0, -1.0, math.nan, math.inf]))
    else:
        target.mean = draw(st.sampled_from([math.inf, -math.inf, math.nan]))


def targets(root: osp.Node, kind: str) -> list[osp.Node]:
    classes = {"sum": osp.Sum, "product": osp.Product, "inner": (osp.Sum, osp.Product), "bernoulli": osp.Bernoulli,
               "categorical": osp.Categorical, "gaussian": osp.Gaussian}[kind]
    return [n for n in osp.topological_order(root) if isinstance(n, classes)]


@given(spn=spns(), corruption=st.sampled_from(sorted(STRUCTURE_CORRUPTIONS)), data=st.data())
def test_corrupted_structures_are_rejected(spn: Spn, corruption: str, data: st.DataObject) -> None:
    kind, words = STRUCTURE_CORRUPTIONS[corruption]
    candidates = targets(spn.root, kind)
    assume(candidates)
    target = data.draw(st.sampled_from(candidates))
    corrupt(corruption, target, spn, data.draw)
    with pytest.raises(StructureError) as caught:
        osp.compile(spn.root, num_vars=spn.num_vars + 1)
    assert words in str(caught.value)
    assert "root" in str(caught.value)  # the path of the offending node from the root


# ----------------------------------------------------------------------------------------------------------------
# Corrupted data are rejected
# ----------------------------------------------------------------------------------------------------------------

DATA_CORRUPTIONS = ("extra column", "missing column", "state out of range", "negative state", "fraction",
                    "infinite value", "NaN not allowed", "1-D", "text")


@given(spn=spns(), corruption=st.sampled_from(DATA_CORRUPTIONS), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_corrupted_data_are_rejected(spn: Spn, corruption: str, seed: int, dtype: torch.dtype,
                                     data: st.DataObject) -> None:
    model = osp.compile(spn.root, dtype=dtype, num_vars=spn.num_vars)
    x = random_data(spn, seed, missing=0.0 if corruption == "NaN not allowed" else 0.3)[1:]
    discrete = [v for v, card in enumerate(spn.cardinalities) if card]
    row = data.draw(st.integers(0, len(x) - 1))
    column = data.draw(st.integers(0, spn.num_vars - 1))
    allow_missing = True
    if corruption == "extra column":
        x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)
    elif corruption == "missing column":
        x = x[:, 1:]
    elif corruption in ("state out of range", "negative state", "fraction"):
        assume(discrete)
        column = data.draw(st.sampled_from(discrete))
        x[row, column] = {"state out of range": spn.cardinalities[column] + data.draw(st.integers(0, 3)),
                          "negative state": -data.draw(st.integers(1, 3)),
                          "fraction": data.draw(st.integers(0, max(spn.cardinalities[column] - 2, 0))) + 0.5,
                          }[corruption]
    elif corruption == "infinite value":
        x[row, column] = data.draw(st.sampled_from([math.inf, -math.inf]))
    elif corruption == "NaN not allowed":
        x[row, column] = math.nan
        allow_missing = False
    elif corruption == "1-D":
        x = x[0]
    else:
        x = x.astype(str)
    with pytest.raises(DataError) as caught:
        model.encode(x, allow_missing=allow_missing)
    message = str(caught.value)
    if corruption in ("state out of range", "negative state", "fraction", "infinite value", "NaN not allowed"):
        assert f"row {row}, column {column}" in message
    if allow_missing:
        with pytest.raises(DataError):
            model.log_likelihood(x)


# ----------------------------------------------------------------------------------------------------------------
# Corrupted model files and structure descriptions are rejected
# ----------------------------------------------------------------------------------------------------------------


@given(spn=spns(max_vars=3), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_damaged_model_files_are_rejected_or_load_intact(spn: Spn, seed: int, data: st.DataObject) -> None:
    model = osp.compile(spn.root, data.draw(st.sampled_from(["raw", "log", "softmax"])), dtype=torch.float64,
                        num_vars=spn.num_vars)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ospn"
        osp.save(model, path)
        content = bytearray(path.read_bytes())
        damage = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]))
        position = data.draw(st.integers(0, len(content) - 1))
        if damage == "truncate":
            content = content[:position]
        elif damage == "flip":
            content[position] ^= data.draw(st.integers(1, 255))
        else:
            noise = data.draw(st.binary(min_size=1, max_size=64))
            content[position:position + len(noise)] = noise
        path.write_bytes(bytes(content))
        try:
            loaded = osp.load(path)
        except ModelFileError as error:
            assert str(path) in str(error)
            return
    x = random_data(spn, seed)
    values = loaded.log_likelihood(x)
    assert not torch.isnan(values).any()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@given(spn=spns(max_vars=3), data=st.data())
def test_damaged_structure_descriptions_are_rejected(spn: Spn, data: st.DataObject) -> None:
    description = json.loads(json.dumps(osp.structure_to_dict(spn.root)))
    entries = description["nodes"]
    for _ in range(data.draw(st.integers(1, 3))):
        entry = entries[data.draw(st.integers(0, len(entries) - 1))]
        key = data.draw(st.sampled_from(sorted(entry) + ["type", "children", "weights", "var", "name"]))
        if data.draw(st.booleans()):
            entry[key] = data.draw(JSON_VALUES)
        else:
            entry.pop(key, None)
    try:
        root = osp.structure_from_dict(description)
        osp.validate(root)
    except OverspnError as error:
        assert isinstance(error, (ModelFileError, StructureError)), type(error)
        assert "\n" not in str(error)


def _model_of_kind(kind: str, spn: Spn, seed: int) -> osp.SPNModule:
    rng = np.random.default_rng(seed)
    if kind == "compiled":
        return osp.compile(spn.root, ["raw", "log", "softmax"][seed % 3], dtype=torch.float64, num_vars=spn.num_vars)
    if kind == "rat":
        leaf = ["bernoulli", "categorical", "gaussian"][seed % 3]
        return osp.RatSPN(osp.RatConfig(num_vars=4, depth=int(rng.integers(1, 3)), num_repetitions=2, num_sums=2,
                                        num_input=2, leaf=leaf, cardinality=3, seed=seed % 1000),
                          ["raw", "log", "softmax"][seed % 3], dtype=torch.float64)
    return osp.HCLT(osp.HCLTConfig(num_vars=4, latent=2, seed=seed % 1000), dtype=torch.float64)


def _json_leaves(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [leaf for key in value for leaf in _json_leaves(value[key], (*path, key))]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in _json_leaves(item, (*path, i))]
    return [path]


HOSTILE_VALUES = st.sampled_from([10**12, 10**30, 10**400, -1, -(10**9), 0, 2**63, 1e308, -1e308, 5e-324,
                                  float("nan"), float("inf"), "NaN", "1e999", "", None, True, [], {}])
MUTATIONS = ("json value", "json bytes", "truncate entry", "npy large shape", "npy header bytes")


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["compiled", "rat", "hclt"]), spn=spns(max_vars=3), seed=st.integers(0, 2**31),
       mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_mutated_model_files_load_intact_or_are_refused_quickly(kind: str, spn: Spn, seed: int, mutation: str,
                                                                 data: st.DataObject) -> None:
    """Any mutation of a valid file of any kind gives a ModelFileError naming the file, or a model that evaluates
    without NaN; a mutation that leaves the layout's meaning alone (the .npy entries' framing) loads only intact.
    Each load takes well under the bound, whatever the file declares."""
    model = _model_of_kind(kind, spn, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ospn"
        osp.save(model, path)
        with zipfile.ZipFile(path) as archive:
            entries = {name: archive.read(name) for name in archive.namelist()}
        tensors = sorted(name for name in entries if name.endswith(".npy"))
        if mutation == "json value":
            header = json.loads(entries["model.json"])
            leaves = _json_leaves(header)
            target = data.draw(st.sampled_from(leaves))
            holder = header
            for key in target[:-1]:
                holder = holder[key]
            holder[target[-1]] = data.draw(HOSTILE_VALUES)
            entries["model.json"] = json.dumps(header).encode()
        elif mutation == "json bytes":
            text = bytearray(entries["model.json"])
            for _ in range(data.draw(st.integers(1, 4))):
                text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.sampled_from(b'0123456789-.e"[]{},:9'))
            entries["model.json"] = bytes(text)
        elif mutation == "truncate entry":
            name = data.draw(st.sampled_from(sorted(entries)))
            entries[name] = entries[name][: data.draw(st.integers(0, max(len(entries[name]) - 1, 0)))]
        elif mutation == "npy large shape" and tensors:
            name = data.draw(st.sampled_from(tensors))
            shape = tuple(data.draw(st.lists(st.sampled_from([0, 1, 7, 10**6, 10**12, 2**62]), min_size=1,
                                             max_size=3)))
            out = io.BytesIO()
            np.lib.format.write_array_header_1_0(out, {"descr": "<f8", "fortran_order": False, "shape": shape})
            original = np.load(io.BytesIO(entries[name]))
            entries[name] = out.getvalue() + (original.tobytes() if data.draw(st.booleans()) else b"")
        elif tensors:
            name = data.draw(st.sampled_from(tensors))
            content = bytearray(entries[name])
            header_end = content.index(b"\n") + 1
            content[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
            entries[name] = bytes(content)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, content in entries.items():
                archive.writestr(name, content)
        start = time.perf_counter()
        try:
            loaded = osp.load(path)
        except ModelFileError as error:
            assert str(path) in str(error) and "\n" not in str(error)
            assert time.perf_counter() - start < 5
            return
        assert time.perf_counter() - start < 5
    x = np.full((3, loaded.num_vars), math.nan)
    with torch.no_grad():
        values = loaded.log_likelihood(x)
        assert torch.isfinite(values).all()
        if mutation in ("npy large shape", "npy header bytes") and loaded.num_vars == model.num_vars:
            # the .npy framing carries no meaning: what loads is the original
            for key, value in model.state_dict().items():
                assert torch.equal(loaded.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------------------------------
# Random CSV text
# ----------------------------------------------------------------------------------------------------------------

CSV_TEXT = st.lists(st.lists(st.sampled_from(["0", "1", "2", "-1", "0.5", "1e3", "", " ", "nan", "?", "inf", "x",
                                              "1,", "NA", "#"]), min_size=1, max_size=4).map(",".join),
                    max_size=6).map("\n".join)


@given(text=CSV_TEXT, binary=st.booleans(), allow_missing=st.booleans(), discrete=st.booleans())
def test_random_csv_text_loads_cleanly_or_fails_with_its_line(text: str, binary: bool, allow_missing: bool,
                                                              discrete: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        path.write_text(text)
        try:
            array = load_csv(path, binary=binary, allow_missing=allow_missing, discrete=discrete)
        except DataError as error:
            message = str(error)
            assert message.startswith(str(path)) and "\n" not in message
            assert "empty" in message or ", line " in message
            return
    lines = [line for line in text.split("\n") if line.strip()]
    assert array.shape == (len(lines), len(lines[0].split(",")))
    observed = array[~np.isnan(array)]
    assert np.all(np.isfinite(observed))
    assert allow_missing or observed.size == array.size
    if binary:
        assert np.all((observed == 0) | (observed == 1))
    if discrete:
        assert np.all((observed >= 0) & (observed == np.round(observed)))
