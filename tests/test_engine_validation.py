"""Every rule of valid structures and data is enforced with an error that names the offending node or column."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import overspn as osp


def bernoullis(*variables: int) -> list[osp.Node]:
    return [osp.Bernoulli(v, 0.5) for v in variables]


def assert_structure_error(root: osp.Node, *fragments: str) -> None:
    """validate and compile both raise StructureError whose message contains every fragment."""
    for check in (osp.validate, osp.compile):
        with pytest.raises(osp.StructureError) as error:
            check(root)
        for fragment in fragments:
            assert fragment in str(error.value), f"{fragment!r} not in {str(error.value)!r}"


def test_incomplete_sum() -> None:
    root = osp.Sum([osp.Bernoulli(0, 0.5), osp.Bernoulli(1, 0.5)], name="mixed_scopes")
    assert_structure_error(osp.Product([root], name="top"), "'mixed_scopes'", "not complete", "[0]", "[1]")


def test_non_decomposable_product() -> None:
    root = osp.Product([osp.Product(bernoullis(0, 1)), osp.Bernoulli(1, 0.3)], name="overlap")
    assert_structure_error(osp.Sum([root]), "'overlap'", "not decomposable", "[1]")


def test_cycle() -> None:
    leaf = osp.Bernoulli(0, 0.5)
    inner = osp.Product([leaf], name="inner")
    outer = osp.Sum([inner], name="outer")
    inner.children = (leaf, outer)  # outer -> inner -> outer
    with pytest.raises(osp.StructureError) as error:
        osp.validate(outer)
    assert "cycle" in str(error.value)
    assert "'inner'" in str(error.value) or "'outer'" in str(error.value)
    with pytest.raises(osp.StructureError, match="cycle"):
        osp.compile(outer)
    # a self-loop
    inner.children = (inner,)
    with pytest.raises(osp.StructureError, match="Product 'inner' is part of a cycle"):
        osp.validate(inner)


@pytest.mark.parametrize("weights, rule", [
    ([1.0, -0.5], "negative weight"),
    ([1.0, math.nan], "non-finite weight"),
    ([math.inf, 1.0], "non-finite weight"),
    ([1.0], "1 weights for 2 children"),
    ([1.0, 1.0, 1.0], "3 weights for 2 children"),
])
def test_bad_sum_weights(weights: list[float], rule: str) -> None:
    assert_structure_error(osp.Sum(bernoullis(0, 0), weights, name="bad_weights"), "'bad_weights'", rule)


@pytest.mark.parametrize("kind", [osp.Sum, osp.Product])
def test_empty_inner_node(kind: type) -> None:
    root = osp.Product([kind([], name="empty"), osp.Bernoulli(0, 0.5)], name="top")
    assert_structure_error(root, f"{kind.__name__} 'empty'", "no children")


@pytest.mark.parametrize("leaf, rule", [
    (osp.Bernoulli(0, 0.0, name="leaf"), "p must lie in (0, 1)"),
    (osp.Bernoulli(0, 1.0, name="leaf"), "p must lie in (0, 1)"),
    (osp.Bernoulli(0, math.nan, name="leaf"), "p must lie in (0, 1)"),
    (osp.Categorical(0, [0.5, 0.6], name="leaf"), "probs must sum to 1"),
    (osp.Categorical(0, [1.5, -0.5], name="leaf"), "probs must be finite and > 0"),
    (osp.Categorical(0, [1.0, 0.0], name="leaf"), "probs must be finite and > 0"),
    (osp.Categorical(0, [], name="leaf"), "probs must not be empty"),
    (osp.Gaussian(0, 0.0, 0.0, name="leaf"), "std must be finite and > 0"),
    (osp.Gaussian(0, 0.0, -1.0, name="leaf"), "std must be finite and > 0"),
    (osp.Gaussian(0, math.inf, 1.0, name="leaf"), "mean must be finite"),
])
def test_leaf_parameters_out_of_range(leaf: osp.Leaf, rule: str) -> None:
    other = osp.Bernoulli(1, 0.5) if leaf.is_discrete else osp.Gaussian(1)
    assert_structure_error(osp.Product([other, leaf]), f"{type(leaf).__name__} 'leaf'", rule)


def test_variable_both_discrete_and_continuous() -> None:
    root = osp.Sum([osp.Gaussian(0, name="continuous"), osp.Bernoulli(0, 0.4, name="discrete")])
    assert_structure_error(root, "x0", "both discrete and continuous", "'continuous'", "'discrete'")


def test_bad_leaf_and_child_arguments() -> None:
    for build, fragment in [
        (lambda: osp.Bernoulli(-1, 0.5), "non-negative int"),
        (lambda: osp.Bernoulli(True, 0.5), "non-negative int"),
        (lambda: osp.Indicator(0, -2), "value must be a non-negative int"),
        (lambda: osp.Product([osp.Bernoulli(0), "x"]), "children must be nodes"),
        (lambda: osp.Sum(bernoullis(0, 0), ["a", "b"]), "numbers"),
    ]:
        with pytest.raises(osp.StructureError, match=fragment):
            build()
    with pytest.raises(osp.StructureError, match="root must be a node"):
        osp.validate("not a node")  # type: ignore[arg-type]


def test_compile_options_are_checked() -> None:
    root = osp.Sum(bernoullis(0, 0))
    with pytest.raises(osp.ConfigurationError, match="weights must be one of"):
        osp.compile(root, "exp")
    with pytest.raises(osp.ConfigurationError, match="floor"):
        osp.compile(root, floor=-1.0)
    with pytest.raises(osp.ConfigurationError, match="dtype"):
        osp.compile(root, dtype=torch.int64)
    with pytest.raises(osp.StructureError, match="num_vars=2 but the structure uses variable x4"):
        osp.compile(osp.Product(bernoullis(0, 4)), num_vars=2)


def test_valid_structure_passes_and_lists_nodes_children_first() -> None:
    shared = osp.Bernoulli(1, 0.2)
    root = osp.Sum([osp.Product([osp.Bernoulli(0, 0.3), shared]), osp.Product([osp.Indicator(0, 1), shared])])
    order = osp.validate(root)
    assert order[-1] is root and len(order) == 6 and len(set(map(id, order))) == 6
    position = {id(n): i for i, n in enumerate(order)}
    assert all(position[id(c)] < position[id(n)] for n in order for c in n.children)


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> osp.CompiledSPN:
    """x0 binary (Bernoulli), x1 categorical with 3 states, x2 continuous."""
    components = [osp.Product([osp.Bernoulli(0, p), osp.Categorical(1, [0.2, 0.3, 0.5]), osp.Gaussian(2, m)])
                  for p, m in ((0.3, -1.0), (0.8, 1.0))]
    return osp.compile(osp.Sum(components))


@pytest.mark.parametrize("data, fragments", [
    (np.zeros((4, 2)), ["2 columns", "3 variables"]),
    (np.zeros((4, 5)), ["5 columns", "3 variables"]),
    (np.zeros(3), ["2-D", "(3,)"]),
    (np.zeros((2, 3, 1)), ["2-D"]),
    (np.array([[0.0, 1.0, 0.1], [2.0, 1.0, 0.5]]), ["value 2.0", "row 1", "column 0", "states 0..1"]),
    (np.array([[0.0, 3.0, 0.1]]), ["value 3.0", "column 1", "states 0..2"]),
    (np.array([[0.0, -1.0, 0.1]]), ["value -1.0", "column 1"]),
    (np.array([[0.5, 1.0, 0.1]]), ["value 0.5", "column 0"]),
    (np.array([[0.0, 1.0, np.inf]]), ["value inf", "column 2", "finite"]),
    (np.array([[0.0, 1.0, -np.inf]]), ["value -inf", "column 2", "finite"]),
    (np.array([["0", "1", "0.5"]]), ["numeric", "<U3"]),
    (np.array([[0, 1, None]], dtype=object), ["numeric", "object"]),
    (torch.zeros((1, 3), dtype=torch.complex64), ["real", "complex64"]),
    ([[0.0, 1.0, 0.5]], ["numpy array or torch tensor", "list"]),
])
def test_data_errors_name_what_is_wrong(model: osp.CompiledSPN, data: object, fragments: list[str]) -> None:
    for method in (model.log_likelihood, model.log_unnormalised, model.encode, model.mpe):
        with pytest.raises(osp.DataError) as error:
            method(data)
        for fragment in fragments:
            assert fragment in str(error.value), f"{fragment!r} not in {str(error.value)!r}"


def test_nan_where_not_allowed(model: osp.CompiledSPN) -> None:
    data = np.array([[0.0, 1.0, 0.2], [1.0, np.nan, 0.3]])
    assert torch.isfinite(model.log_likelihood(data)).all()  # missing values are allowed by default
    with pytest.raises(osp.DataError) as error:
        model.encode(data, allow_missing=False)
    assert "nan" in str(error.value) and "row 1, column 1" in str(error.value) and "not allowed" in str(error.value)


def test_evidence_for_sampling_is_checked(model: osp.CompiledSPN) -> None:
    with pytest.raises(osp.DataError, match="value 2.0 in row 0, column 0"):
        model.sample(4, evidence=np.array([2.0, np.nan, np.nan]))
    with pytest.raises(osp.DataError, match="2 columns"):
        model.sample(4, evidence=np.array([0.0, np.nan]))


def test_valid_inputs_of_every_numeric_type_agree(model: osp.CompiledSPN) -> None:
    expected = model.log_likelihood(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    for data in (np.array([[1, 2, 0], [0, 0, 0]]), np.array([[1, 2, 0], [0, 0, 0]], dtype=np.uint8),
                 torch.tensor([[1, 2, 0], [0, 0, 0]]), torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])):
        assert torch.equal(model.log_likelihood(data), expected)


def test_weights_that_underflow_in_float32_are_refused_at_compile_time() -> None:
    """Positive weights that round to 0 in float32 would make every log-likelihood NaN; compiling says so."""
    tiny = osp.Sum([osp.Product([osp.Bernoulli(0, 0.3), osp.Bernoulli(1, 0.6)]),
                    osp.Product([osp.Bernoulli(0, 0.7), osp.Bernoulli(1, 0.2)])], [1e-50, 3e-50])
    with pytest.raises(osp.StructureError, match="float32"):
        osp.compile_structure(tiny, "raw", dtype=torch.float32)
    model = osp.compile_structure(tiny, "raw", dtype=torch.float64)  # representable there
    assert bool(torch.isfinite(model.log_likelihood(np.array([[0.0, 1.0]]))).all())


def test_a_layout_beyond_the_memory_budget_is_refused_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """An indicator of a huge state would need a table row that wide: compiling names the estimate and the limit."""
    import tracemalloc

    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", str(2**20))
    wide = osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 10**7)], [1.0, 1.0])
    tracemalloc.start()
    with pytest.raises(osp.ConfigurationError, match="memory budget"):
        osp.compile_structure(wide)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**22  # refused before the 80 MB table was allocated
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", str(2**30))
    assert osp.compile_structure(osp.mixture(num_vars=20, num_components=4)).num_vars == 20
