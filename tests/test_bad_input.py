"""Every entry point rejects malformed input with a specific exception whose message names what is wrong and where.

Each case is one row of a table: what the user does (given a temporary folder), the exception type expected, and
the words the message must contain (file, line and column; node name or path; row, column and value).
"""

from __future__ import annotations

import io
import json
import re
import sys
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn import data
from overspn.cli import argtypes
from overspn.cli import main as cli
from overspn.errors import ConfigurationError, DataError, ModelFileError, OverspnError, StructureError
from overspn.learn.fit import fit


@dataclass(frozen=True)
class Case:
    name: str
    action: Callable[[Path], object]
    error: type[Exception]
    words: tuple[str, ...]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def small_model(dtype: torch.dtype = torch.float64) -> osp.CompiledSPN:
    """x0: binary (indicator sum), x1: categorical with 3 states, x2: Gaussian."""
    component = osp.Product([osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 1)], [0.3, 0.7], name="x0 unit"),
                             osp.Categorical(1, [0.2, 0.3, 0.5], name="x1 leaf"),
                             osp.Gaussian(2, 0.0, 1.0, name="x2 leaf")], name="component")
    return osp.compile(osp.Sum([component], [1.0], name="root"), dtype=dtype)


def saved_model(folder: Path) -> Path:
    path = folder / "model.ospn"
    osp.save(small_model(), path)
    return path


def rewritten_model(folder: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of a valid model file whose entries are passed through ``change(name, content)``."""
    source = saved_model(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(buffer, "w") as copy:
        for entry in original.namelist():
            content = change(entry, original.read(entry))
            if content is not None:
                copy.writestr(entry, content)
    target = folder / "changed.ospn"
    target.write_bytes(buffer.getvalue())
    return target


def header_change(update: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def change(entry: str, content: bytes) -> bytes:
        if entry != "model.json":
            return content
        header = json.loads(content)
        update(header)
        return json.dumps(header).encode()
    return change


def parameters_set_to(value: float) -> Callable[[str, bytes], bytes]:
    def change(entry: str, content: bytes) -> bytes:
        if not entry.endswith(".npy"):
            return content
        array = np.load(io.BytesIO(content))
        array[...] = value
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()
    return change


def leaves() -> tuple[osp.Node, osp.Node, osp.Node]:
    return osp.Bernoulli(0, 0.3, name="a"), osp.Bernoulli(1, 0.6, name="b"), osp.Bernoulli(0, 0.8, name="c")


def cycle() -> osp.Node:
    a, b, _ = leaves()
    product = osp.Product([a, b], name="loop product")
    top = osp.Sum([product], name="loop sum")
    product.children = (a, top)  # mutating a node is the only way to make a cycle
    return top


def not_a_node_child() -> osp.Node:
    a, b, _ = leaves()
    product = osp.Product([a, b], name="p")
    product.children = (a, "b")  # type: ignore[assignment]
    return product


def unreachable_download(folder: Path) -> object:
    patch = pytest.MonkeyPatch()
    try:
        patch.delenv("OVERSPN_DATA", raising=False)
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        patch.setattr(data, "_DOWNLOAD_URL", "http://127.0.0.1:9/datasets")  # the discard port: refused at once
        return data.load_dataset("nltcs")
    finally:
        patch.undo()


def wrong_split_size(folder: Path) -> object:
    (folder / "nltcs").mkdir()
    for split in ("train", "valid", "test"):
        write(folder / "nltcs", f"nltcs.{split}.data", "0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1\n" * 3)
    return data.load_dataset("nltcs", data_dir=folder)


def discrete_files(folder: Path, test_text: str) -> object:
    train_file = write(folder, "train.csv", "0,1,2\n1,0,1\n")
    test_file = write(folder, "test.csv", test_text)
    return data.load_user_data(train_file, test=test_file, kind="discrete")


ROWS = "1,0\n"
API_CASES = [
    # -- data files ------------------------------------------------------------------------------------------------
    Case("missing file", lambda d: data.load_csv(d / "absent.csv"), DataError, ("absent.csv", "no such file")),
    Case("empty file", lambda d: data.load_csv(write(d, "e.csv", "")), DataError, ("e.csv", "empty")),
    Case("blank lines only", lambda d: data.load_csv(write(d, "b.csv", "\n \n")), DataError, ("b.csv", "empty")),
    Case("folder instead of file", lambda d: data.load_csv(d), DataError, ("folder",)),
    Case("ragged rows", lambda d: data.load_csv(write(d, "r.csv", ROWS + "0,1,1\n")), DataError,
         ("r.csv", "line 2", "3 columns, expected 2")),
    Case("text token", lambda d: data.load_csv(write(d, "t.csv", ROWS * 3 + "0,yes\n")), DataError,
         ("t.csv", "line 4, column 1", "'yes' is not a number")),
    Case("header row", lambda d: data.load_csv(write(d, "h.csv", "a,b\n" + ROWS)), DataError,
         ("line 1, column 0", "'a'")),
    Case("NaN not allowed", lambda d: data.load_csv(write(d, "n.csv", ROWS + "nan,1\n")), DataError,
         ("n.csv", "line 2, column 0", "missing value")),
    Case("empty field not allowed", lambda d: data.load_csv(write(d, "f.csv", ROWS + "1,\n")), DataError,
         ("line 2, column 1", "empty field")),
    Case("inf in file", lambda d: data.load_csv(write(d, "i.csv", ROWS + "-inf,1\n"), allow_missing=True),
         DataError, ("line 2, column 0", "'-inf' is not finite")),
    Case("2 in binary file", lambda d: data.load_csv(write(d, "b2.csv", ROWS + "0,2\n"), binary=True), DataError,
         ("line 2, column 1", "'2' is not binary")),
    Case("fraction as a state", lambda d: data.load_csv(write(d, "s.csv", ROWS + "0.5,1\n"), discrete=True),
         DataError, ("line 2, column 0", "'0.5' is not a state")),
    Case("train/test column mismatch", lambda d: data.load_user_data(write(d, "tr.csv", "0,1,1\n"),
                                                                     test=write(d, "te.csv", "0,1\n")),
         DataError, ("te.csv", "2 columns", "tr.csv", "has 3")),
    Case("unseen category in test", lambda d: discrete_files(d, "0,1,2\n\n1,3,1\n"), DataError,
         ("test.csv, line 3, column 1", "state 3 never occurs", "states 0..1")),
    Case("constant column for Gaussian leaves", lambda d: data.load_user_data(
        write(d, "c.csv", "0.5,2,1\n0.7,2,3\n"), kind="continuous"), DataError,
         ("c.csv", "column 1 is constant", "2.0", "zero variance")),
    Case("unknown data kind", lambda d: data.load_user_data(write(d, "k.csv", ROWS), kind="text"), DataError,
         ("kind", "'text'")),
    Case("splits of different widths", lambda d: data.Dataset("mine", np.zeros((2, 3)), np.zeros((2, 2)), None),
         DataError, ("'mine'", "valid split has 2 columns", "train split has 3")),
    Case("unknown data set name", lambda d: data.load_dataset("nltsc"), DataError,
         ("unknown data set 'nltsc'", "nltcs", "wine")),
    Case("wrong split size", wrong_split_size, DataError, ("nltcs.train.data", "3 rows", "expected 16181 rows")),
    Case("offline download", unreachable_download, DataError,
         ("cannot download", "127.0.0.1:9", "OVERSPN_DATA")),
    # -- data given to a model -------------------------------------------------------------------------------------
    Case("strings to log_likelihood", lambda d: small_model().log_likelihood(np.array([["0", "1", "2"]])),
         DataError, ("numeric", "<U1")),
    Case("list to log_likelihood", lambda d: small_model().log_likelihood([[0, 1, 0.5]]), DataError,
         ("numpy array or torch tensor", "list")),
    Case("1-D array to log_likelihood", lambda d: small_model().log_likelihood(np.zeros(3)), DataError,
         ("2-D", "(3,)")),
    Case("too many columns", lambda d: small_model().log_likelihood(np.zeros((4, 5))), DataError,
         ("5 columns", "3 variables")),
    Case("2 for a binary variable", lambda d: small_model().log_likelihood(np.array([[1, 2, 0.0], [2, 0, 0.0]])),
         DataError, ("invalid value 2.0", "row 1, column 0", "states 0..1")),
    Case("unseen category", lambda d: small_model().log_likelihood(np.array([[0, 3, 0.0]])), DataError,
         ("invalid value 3.0", "row 0, column 1", "states 0..2")),
    Case("fraction for a discrete variable", lambda d: small_model().log_likelihood(np.array([[0.5, 0, 0.0]])),
         DataError, ("0.5", "row 0, column 0")),
    Case("inf for a Gaussian", lambda d: small_model().log_likelihood(torch.tensor([[0, 0, 0.0], [0, 1, np.inf]])),
         DataError, ("inf", "row 1, column 2", "finite")),
    Case("NaN where missing values are not allowed",
         lambda d: small_model().encode(np.array([[0, np.nan, 0.0]]), allow_missing=False), DataError,
         ("nan", "row 0, column 1", "missing values")),
    Case("complex tensor", lambda d: small_model().log_likelihood(torch.zeros((1, 3), dtype=torch.complex64)),
         DataError, ("real", "complex")),
    # -- structures ------------------------------------------------------------------------------------------------
    Case("not complete", lambda d: osp.validate(osp.Sum([leaves()[0], leaves()[1]], name="mix")), StructureError,
         ("Sum 'mix'", "not complete", "[0]", "[1]")),
    Case("not decomposable", lambda d: osp.validate(osp.Product([leaves()[0], leaves()[2]], name="prod")),
         StructureError, ("Product 'prod'", "not decomposable", "variables [0]", "child 1")),
    Case("cycle", lambda d: osp.validate(cycle()), StructureError, ("cycle", "loop sum", "root.children[0]")),
    Case("negative weight", lambda d: osp.compile(osp.Sum([leaves()[0], leaves()[2]], [0.5, -0.5], name="w")),
         StructureError, ("Sum 'w'", "negative weight -0.5", "child 1")),
    Case("NaN weight", lambda d: osp.validate(osp.Sum([leaves()[0], leaves()[2]], [np.nan, 1.0], name="w")),
         StructureError, ("Sum 'w'", "non-finite weight nan", "child 0")),
    Case("infinite weight", lambda d: osp.validate(osp.Sum([leaves()[0]], [np.inf], name="w")), StructureError,
         ("non-finite weight inf",)),
    Case("all weights zero", lambda d: osp.validate(osp.Sum([leaves()[0], leaves()[2]], [0.0, 0.0], name="z")),
         StructureError, ("Sum 'z'", "all weights are zero")),
    Case("empty sum", lambda d: osp.validate(osp.Product([osp.Sum([], name="empty"), leaves()[1]])),
         StructureError, ("Sum 'empty'", "root.children[0]", "no children")),
    Case("weights do not match children", lambda d: osp.validate(osp.Sum([leaves()[0]], [0.5, 0.5], name="w")),
         StructureError, ("2 weights for 1 children",)),
    Case("weights of the wrong shape", lambda d: osp.Sum([leaves()[0]], [[1.0]], name="w"), StructureError,
         ("Sum 'w'", "one-dimensional", "(1, 1)")),
    Case("text as a weight", lambda d: osp.Sum([leaves()[0]], ["heavy"], name="w"), StructureError,
         ("Sum 'w'", "numbers", "heavy")),
    Case("Bernoulli p outside (0, 1)", lambda d: osp.validate(osp.Bernoulli(3, 1.5, name="coin")), StructureError,
         ("Bernoulli 'coin'", "p must lie in (0, 1)", "1.5")),
    Case("Bernoulli p a string", lambda d: osp.Bernoulli(3, "half"), StructureError,
         ("Bernoulli leaf on x3", "p must be a number", "'half'")),
    Case("categorical not normalised", lambda d: osp.validate(osp.Categorical(0, [0.5, 0.6], name="cat")),
         StructureError, ("Categorical 'cat'", "sum to 1")),
    Case("Gaussian std 0", lambda d: osp.compile(osp.Gaussian(2, 0.0, 0.0, name="g")), StructureError,
         ("Gaussian 'g'", "std", "> 0")),
    Case("discrete and continuous leaves on one variable",
         lambda d: osp.validate(osp.Sum([osp.Gaussian(0, name="g"), leaves()[0]])), StructureError,
         ("x0", "discrete and continuous")),
    Case("child that is not a node", lambda d: osp.validate(not_a_node_child()), StructureError,
         ("Product 'p'", "not a node", "str")),
    Case("root that is not a node", lambda d: osp.compile(None), StructureError, ("root must be a node",)),
    Case("negative variable", lambda d: osp.Indicator(-1, 0), StructureError, ("variable", "-1")),
    Case("num_vars too small", lambda d: osp.compile(osp.Product([leaves()[0], leaves()[1]]), num_vars=1),
         StructureError, ("num_vars=1", "x1")),
    # -- transforms and options ------------------------------------------------------------------------------------
    Case("branching does not match components", lambda d: osp.overparametrize(osp.mixture(3, 8), (2, 2)),
         ConfigurationError, ("(2, 2)", "is 4", "8 children")),
    Case("branching with a zero", lambda d: osp.overparametrize(osp.mixture(3, 4), (4, 0)), ConfigurationError,
         ("branching", "positive")),
    Case("Gaussian std that underflows in float32", lambda d: osp.compile(osp.Gaussian(0, 0.0, 1e-300)),
         StructureError, ("underflows", "float32", "float64")),
    Case("sum weight that overflows in float32", lambda d: osp.compile(osp.Sum([leaves()[0]], [1e39])),
         StructureError, ("not finite", "float32", "float64")),
    Case("negative number of samples", lambda d: small_model().sample(-1), ConfigurationError,
         ("number of samples", "-1")),
    Case("floor that is not a number", lambda d: osp.compile(osp.mixture(2, 2), floor="a"), ConfigurationError,
         ("floor", "'a'")),
    Case("fractional number of variables", lambda d: osp.mixture(3.5, 3), ConfigurationError,
         ("num_vars", "3.5")),
    Case("overparametrize with initial weight zero", lambda d: osp.overparametrize(osp.mixture(3, 4), (2, 2), init=0),
         ConfigurationError, ("init", "> 0")),
    Case("overparametrize a product", lambda d: osp.overparametrize(osp.Product([leaves()[0]], name="p")),
         StructureError, ("Product 'p'", "sum node at the root")),
    Case("unknown weight parametrisation", lambda d: osp.compile(osp.mixture(2, 2), "exp"), ConfigurationError,
         ("weights must be one of", "'exp'")),
    Case("negative floor", lambda d: osp.compile(osp.mixture(2, 2), floor=-1.0), ConfigurationError,
         ("floor", "-1.0")),
    Case("learning rate 0", lambda d: fit(small_model(), np.zeros((2, 3)), optimizer="sgd", epochs=1, lr=0.0),
         ConfigurationError, ("learning rate", "> 0", "0.0")),
    Case("learning rate -1", lambda d: fit(small_model(), np.zeros((2, 3)), optimizer="sgd", epochs=1, lr=-1),
         ConfigurationError, ("learning rate", "-1")),
    Case("learning rate NaN", lambda d: fit(small_model(), np.zeros((2, 3)), optimizer="sgd", epochs=1,
                                            lr=float("nan")), ConfigurationError, ("learning rate", "nan")),
    Case("damaged checkpoint", lambda d: fit(small_model(), np.zeros((2, 3)), optimizer="sgd", epochs=1, lr=0.1,
                                             checkpoint=write(d, "run.pt", "garbage")), ModelFileError,
         ("run.pt", "damaged", "--restart")),
    # -- model files -----------------------------------------------------------------------------------------------
    Case("missing model file", lambda d: osp.load(d / "none.ospn"), ModelFileError, ("none.ospn", "no such")),
    Case("empty model file", lambda d: osp.load(write(d, "empty.ospn", "")), ModelFileError,
         ("empty.ospn", "empty")),
    Case("foreign text file", lambda d: osp.load(write(d, "notes.txt", "weights: 1, 2\n")), ModelFileError,
         ("notes.txt", "not an overspn model file", "not a zip")),
    Case("truncated model file", lambda d: osp.load(write_bytes(d / "cut.ospn", saved_model(d).read_bytes()[:300])),
         ModelFileError, ("cut.ospn", "corrupted or truncated")),
    Case("torch checkpoint instead of a model", lambda d: osp.load(torch_file(d)), ModelFileError,
         ("checkpoint.pt", "no model.json")),
    Case("newer model file version", lambda d: osp.load(rewritten_model(d, header_change(
        lambda h: h.update(version=7)))), ModelFileError, ("version 7", "not supported", "newer")),
    Case("other format name", lambda d: osp.load(rewritten_model(d, header_change(
        lambda h: h.update(format="other-tool")))), ModelFileError, ("not an overspn model file", "'other-tool'")),
    Case("header field of the wrong type", lambda d: osp.load(rewritten_model(d, header_change(
        lambda h: h.update(num_vars="three")))), ModelFileError, ("num_vars", "'three'")),
    Case("missing header field", lambda d: osp.load(rewritten_model(d, header_change(lambda h: h.pop("dtype")))),
         ModelFileError, ("no field 'dtype'",)),
    Case("negative weight in the stored structure", lambda d: osp.load(rewritten_model(d, header_change(
        lambda h: h["structure"]["weights"].__setitem__(-1, -2.0)))), ModelFileError,
         ("Sum 'root'", "negative weight -2.0")),
    Case("child reference out of range", lambda d: osp.load(rewritten_model(d, header_change(
        lambda h: h["structure"]["children"].__setitem__(-1, 99)))), ModelFileError,
         ("node", "child 99", "not an earlier node")),
    Case("NaN parameters", lambda d: osp.load(rewritten_model(d, parameters_set_to(np.nan))), ModelFileError,
         ("parameter", "NaN")),
    Case("parameters making a negative weight", lambda d: osp.load(rewritten_model(d, parameters_set_to(-3.0))),
         ModelFileError, ("changed.ospn", "not make a usable model", "negative weights")),
    Case("zero partition function", lambda d: osp.load(rewritten_model(d, parameters_set_to(0.0))), ModelFileError,
         ("changed.ospn", "log partition function is -inf")),
    Case("saving a diverged model", lambda d: osp.save(diverged_model(), d / "out.ospn"), ModelFileError,
         ("cannot save", "out.ospn", "'gaussian.log_std'", "NaN")),
    Case("missing parameter", lambda d: osp.load(rewritten_model(
        d, lambda entry, content: None if entry.endswith(".npy") else content)), ModelFileError,
         ("parameter", "missing")),
]


def diverged_model() -> osp.CompiledSPN:
    model = small_model()
    with torch.no_grad():
        model.gaussian.log_std.fill_(np.nan)
    return model


def write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def torch_file(folder: Path) -> Path:
    path = folder / "checkpoint.pt"
    torch.save({"weights": torch.ones(3)}, path)
    return path


@pytest.mark.parametrize("case", API_CASES, ids=[case.name for case in API_CASES])
def test_api_rejects_bad_input(case: Case, tmp_path: Path) -> None:
    with pytest.raises(OverspnError) as caught:
        case.action(tmp_path)
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    assert isinstance(caught.value, ValueError)  # all input errors are also ValueErrors
    message = str(caught.value)
    assert "\n" not in message
    for words in case.words:
        assert words in message, f"{words!r} not in {message!r}"


def test_table_is_broad() -> None:
    assert len(API_CASES) >= 30
    assert len({case.name for case in API_CASES}) == len(API_CASES)


# ----------------------------------------------------------------------------------------------------------------
# The command line, through cli.main with a small command registered for the test only
# ----------------------------------------------------------------------------------------------------------------


def _fixture_command(args: object) -> int:
    dataset = data.load_user_data(args.train, test=args.test, kind=args.kind)  # type: ignore[attr-defined]
    if args.model is not None:  # type: ignore[attr-defined]
        osp.load(args.model)  # type: ignore[attr-defined]
    if args.out is not None:  # type: ignore[attr-defined]
        (Path(args.out) / "missing" / "x.json").read_text()  # type: ignore[attr-defined]
    return 0 if dataset.num_vars else 1


def _register_fixture(subparsers: object) -> None:
    parser = subparsers.add_parser("fixture")  # type: ignore[attr-defined]
    parser.add_argument("--train", required=True)
    parser.add_argument("--test")
    parser.add_argument("--kind", choices=data.DATA_KINDS, default="binary")
    parser.add_argument("--lr", type=argtypes.positive_float, default=0.1)
    parser.add_argument("--iterations", type=argtypes.positive_int, default=1)
    parser.add_argument("--model")
    parser.add_argument("--out")
    parser.set_defaults(handler=_fixture_command)


@pytest.fixture
def fixture_command(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("overspn.cli.fixture")
    module.register = _register_fixture  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "overspn.cli.fixture", module)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "fixture"))


CLI_CASES = [
    # (name, arguments given a folder, exit status, words of the one line printed)
    ("missing --train file", lambda d: ["--train", str(d / "absent.csv")], 2, ("absent.csv", "no such file")),
    ("text token in --train", lambda d: ["--train", str(write(d, "bad.csv", ROWS + "1,x\n"))], 2,
     ("bad.csv, line 2, column 1", "'x' is not a number")),
    ("2 in a binary --train", lambda d: ["--train", str(write(d, "b.csv", ROWS + "2,0\n"))], 2,
     ("b.csv, line 2, column 0", "not binary")),
    ("column mismatch", lambda d: ["--train", str(write(d, "a.csv", ROWS)), "--test", str(write(d, "t.csv", "1\n"))],
     2, ("t.csv", "1 columns", "has 2")),
    ("learning rate -1", lambda d: ["--train", "x.csv", "--lr", "-1"], 2, ("--lr", "> 0", "'-1'")),
    ("learning rate text", lambda d: ["--train", "x.csv", "--lr", "fast"], 2, ("--lr", "'fast'")),
    ("iterations 0", lambda d: ["--train", "x.csv", "--iterations", "0"], 2, ("--iterations", "integer >= 1")),
    ("unknown option value", lambda d: ["--train", "x.csv", "--kind", "text"], 2, ("--kind", "invalid choice",
                                                                                   "'text'")),
    ("unknown option", lambda d: ["--train", "x.csv", "--speed", "3"], 2, ("unrecognized arguments", "--speed")),
    ("corrupted --model", lambda d: ["--train", str(write(d, "a.csv", ROWS)), "--model",
                                     str(write(d, "m.ospn", "PK\x03\x04garbage"))], 2,
     ("m.ospn", "corrupted or truncated")),
    ("file-system error", lambda d: ["--train", str(write(d, "a.csv", ROWS)), "--out", str(d)], 2,
     ("No such file or directory", "x.json")),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_prints_one_line(case: tuple, fixture_command: None, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    _, arguments, status, words = case
    try:
        code = cli.main(["fixture", *arguments(tmp_path)])
    except SystemExit as stop:  # argparse exits for bad options
        code = stop.code
    captured = capsys.readouterr()
    assert code == status
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert re.match(r"overspn fixture: error: ", lines[0]), lines[0]
    assert "Traceback" not in captured.err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


# ----------------------------------------------------------------------------------------------------------------
# Divergence: training whose objective stops being finite ends with DivergenceError, the model restored
# ----------------------------------------------------------------------------------------------------------------


def gaussian_mixture() -> osp.CompiledSPN:
    return osp.compile(osp.mixture(3, 4, leaf="gaussian", perturbation=0.5, seed=0), "log", dtype=torch.float64)


def test_gradient_ascent_with_a_huge_learning_rate_raises_divergence() -> None:
    model = gaussian_mixture()
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(osp.DivergenceError) as caught:
        fit(model, x, optimizer="sgd", epochs=20, lr=1e4)
    error = caught.value
    assert isinstance(error, OverspnError) and not isinstance(error, ValueError)
    assert error.iteration == 1
    assert "epoch 1" in str(error) and "learning rate" in str(error)
    assert len(error.history.train_llh) == error.iteration  # the finite values before it
    # the model holds the last parameters with a finite objective: here the initial ones
    initial = gaussian_mixture()
    for (name, parameter), (_, start) in zip(model.named_parameters(), initial.named_parameters()):
        assert torch.equal(parameter, start), name
    assert float(model.log_likelihood(x).detach().mean()) == pytest.approx(error.history.train_llh[-1], rel=1e-12)


def test_data_of_zero_probability_diverge_at_epoch_zero() -> None:
    model = osp.compile(osp.Sum([osp.Product([osp.Indicator(0, 1), osp.Bernoulli(1, 0.5)])]), dtype=torch.float64)
    with pytest.raises(osp.DivergenceError) as caught:
        fit(model, np.array([[1.0, 0.0], [0.0, 1.0]]), optimizer="sgd", epochs=5, lr=0.1)
    assert caught.value.iteration == 0
    assert "epoch 0" in str(caught.value) and "zero probability" in str(caught.value)


def test_mini_batch_training_with_a_huge_learning_rate_raises_divergence() -> None:
    from overspn.engine.rat import RatConfig, RatSPN
    model = RatSPN(RatConfig(num_vars=4, depth=1, num_repetitions=2, num_sums=2, num_input=2, leaf="gaussian"))
    x = np.random.default_rng(0).normal(size=(60, 4))
    with pytest.raises(osp.DivergenceError) as caught:
        fit(model, x, optimizer="sgd", lr=1e6, batch_size=30, epochs=5, eval_batch_size=60)
    error = caught.value
    assert error.iteration >= 1 and f"epoch {error.iteration}" in str(error) and "learning rate" in str(error)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.log_likelihood(torch.from_numpy(x).to(next(model.parameters()).dtype))).all()
