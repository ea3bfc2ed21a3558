"""Crafted model files: small files that declare huge layouts, numbers out of range, parameters that overflow.

Each is refused with a ModelFileError naming the file (and the estimate and the limit, or the node or parameter at
fault) before anything large is allocated: the memory and time of the refusals are measured in a fresh process.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.errors import ConfigurationError, ModelFileError
from overspn.structure_columns import read_columns, to_entries

MiB = 2**20


def compiled_model() -> osp.CompiledSPN:
    """x0 binary (indicators), x1 categorical, x2 Gaussian; a product of discrete inputs (the one-hot path)."""
    first = osp.Product([osp.Indicator(0, 0), osp.Categorical(1, [0.2, 0.3, 0.5]), osp.Gaussian(2, 0.0, 1.0)])
    second = osp.Product([osp.Indicator(0, 1), osp.Categorical(1, [0.5, 0.3, 0.2]), osp.Gaussian(2, 1.0, 2.0)])
    return osp.compile(osp.Sum([first, second], [0.4, 0.6]), "log", dtype=torch.float64)


def rat_model(leaf: str = "bernoulli") -> osp.RatSPN:
    return osp.RatSPN(osp.RatConfig(num_vars=8, depth=2, num_repetitions=2, num_sums=3, num_input=2, leaf=leaf))


def hclt_model() -> osp.HCLT:
    return osp.HCLT(osp.HCLTConfig(num_vars=5, latent=3))


def entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write(path: Path, content: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return path


def crafted(folder: Path, model: osp.SPNModule, name: str, header: Callable[[dict], None] | None = None,
            tensors: Callable[[str, bytes], bytes] | None = None, raw_header: str | None = None) -> Path:
    """A copy of ``model``'s file with its header changed by ``header`` (or replaced by ``raw_header``) and its
    tensor entries by ``tensors``."""
    source = folder / f"{name}.source.ospn"
    osp.save(model, source)
    content = entries(source)
    if header is not None:
        value = json.loads(content["model.json"])
        header(value)
        content["model.json"] = json.dumps(value).encode()
    if raw_header is not None:
        content["model.json"] = raw_header.encode()
    if tensors is not None:
        content = {key: tensors(key, data) if key.endswith(".npy") else data for key, data in content.items()}
    return write(folder / f"{name}.ospn", content)


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A .npy file's header (version 1.0) declaring ``shape``, followed by no data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return out.getvalue()


def legacy_nodes(header: dict) -> list[dict]:
    """The header turned into the form format version 2 wrote (one object per node); returns its nodes."""
    header["version"] = 2
    header["structure"] = to_entries(read_columns(header["structure"]))
    return header["structure"]["nodes"]


def set_nodes(update: Callable[[list[dict]], None]) -> Callable[[dict], None]:
    return lambda header: update(legacy_nodes(header))


def set_column(letter: str, field: str, value: object) -> Callable[[dict], None]:
    """Set ``field`` of the first node of type ``letter`` in the column form (``var`` is indexed over all leaves,
    the other fields over their own kind; ``weights``: the first weight of the first sum)."""
    def change(header: dict) -> None:
        columns = header["structure"]
        leaves = [t for t in columns["types"] if t in "IBCG"]
        columns[field][leaves.index(letter) if field == "var" else 0] = value
    return change


def set_structure(**values: object) -> Callable[[dict], None]:
    return lambda header: header["structure"].update(values)


def first(nodes: list[dict], kind: str) -> dict:
    return next(node for node in nodes if node["type"] == kind)


def set_config(**values: object) -> Callable[[dict], None]:
    return lambda header: header["config"].update(values)


def set_log_std(value: float) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if "log_std" not in name:
            return data
        array = np.load(io.BytesIO(data))
        array[...] = value
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()
    return change


HUGE = 10**400
# (name, model factory, header change, tensor change, words of the message)
CASES: list[tuple[str, Callable[[], osp.SPNModule], object, object, tuple[str, ...]]] = [
    ("ten million variables", compiled_model, lambda h: h.update(num_vars=10**7), None,
     ("10000000 variables", "limit")),
    ("indicator of state 1e8", compiled_model, set_nodes(lambda n: first(n, "Indicator").update(value=10**8)), None,
     ("100000002 states", "limit")),
    ("indicator of state 1e12", compiled_model, set_nodes(lambda n: first(n, "Indicator").update(value=10**12)),
     None, ("Indicator", "its value is 1000000000000", "largest accepted")),
    ("indicator of a huge state", compiled_model, set_nodes(lambda n: first(n, "Indicator").update(value=HUGE)),
     None, ("its value is", "digits")),
    ("variable 1e12", compiled_model, set_nodes(lambda n: first(n, "Gaussian").update(var=10**12)), None,
     ("Gaussian", "its variable")),
    ("categorical of 1e7 states", compiled_model,
     set_nodes(lambda n: first(n, "Categorical").update(probs=[1e-7] * 10**6)), None, ("limit",)),
    ("columns: indicator of state 1e8", compiled_model, set_column("I", "value", 10**8), None,
     ("100000002 states", "limit")),
    ("columns: indicator of state 1e12", compiled_model, set_column("I", "value", 10**12), None,
     ("Indicator", "its value is 1000000000000", "largest accepted")),
    ("columns: indicator of a huge state", compiled_model, set_column("I", "value", HUGE), None,
     ("its value is", "digits")),
    ("columns: variable 1e12", compiled_model, set_column("G", "var", 10**12), None, ("Gaussian", "its variable")),
    ("columns: negative variable", compiled_model, set_column("G", "var", -1),
     None, ("Gaussian", "its variable must be an integer >= 0")),
    ("columns: categorical of 1e7 states", compiled_model, set_column("C", "probs", [1e-7] * 10**6), None,
     ("limit",)),
    ("columns: huge weight", compiled_model, set_column("S", "weights", HUGE), None,
     ("weights", "beyond the range of a float")),
    ("columns: huge mean", compiled_model, set_column("G", "mean", HUGE), None,
     ("mean", "beyond the range of a float")),
    ("columns: weight that is a string", compiled_model, set_column("S", "weights", "1"), None,
     ("Sum", "weights must be numbers")),
    ("columns: unknown node letter", compiled_model, set_structure(types="IXS"), None,
     ("node 1", "unknown type 'X'")),
    ("columns: children miscounted", compiled_model, set_structure(arity=[10**6, 1, 1]), None,
     ("'children'", "its nodes need")),
    ("columns: children counted in billions", compiled_model, set_structure(arity=[2**31 - 1] * 3), None,
     ("'children'", "its nodes need 6442450941")),
    ("columns: a later child", compiled_model, lambda h: h["structure"]["children"].__setitem__(0, 10**6), None,
     ("refers to child 1000000", "not an earlier node")),
    ("columns: names not an object", compiled_model, set_structure(names=[1]), None, ("'names'",)),
    ("columns: a name keyed by a digit that is not a number", compiled_model, set_structure(names={"²": "x"}),
     None, ("'names'", "node numbers")),
    ("huge floor", compiled_model, lambda h: h.update(floor=HUGE), None, ("'floor'", "invalid value")),
    ("huge weight", compiled_model, set_nodes(lambda n: first(n, "Sum").update(weights=[HUGE, 1])), None,
     ("weights", "beyond the range of a float")),
    ("huge mean", compiled_model, set_nodes(lambda n: first(n, "Gaussian").update(mean=HUGE)), None,
     ("mean", "beyond the range of a float")),
    ("compiled Gaussian log_std -1000", compiled_model, None, set_log_std(-1000.0),
     ("gaussian.log_std", "standard deviation is 0 or infinite")),
    ("compiled Gaussian log_std 1000", compiled_model, None, set_log_std(1000.0),
     ("gaussian.log_std", "standard deviation is 0 or infinite")),
    ("RAT Gaussian log_std -1000", lambda: rat_model("gaussian"), None, set_log_std(-1000.0),
     ("'log_std'", "standard deviation is 0 or infinite")),
    ("RAT of a million variables", rat_model, set_config(num_vars=10**6), None, ("parameters", "the file stores")),
    ("RAT of a billion variables", rat_model, set_config(num_vars=10**9), None, ("limit",)),
    ("RAT of huge sums", rat_model, set_config(num_sums=10**5, num_repetitions=10**3), None,
     ("parameters",)),
    ("RAT of depth 1e100", rat_model, set_config(depth=10**100), None, ("depth",)),
    ("RAT of depth 40", rat_model, set_config(depth=40, num_vars=2**40), None, ("num_vars", "largest accepted")),
    ("RAT of depth 30", rat_model, set_config(depth=30, num_vars=2**30), None, ("limit",)),
    ("HCLT of a huge latent", hclt_model, set_config(latent=10**5), None, ("parameters",)),
    ("HCLT of huge cardinality", hclt_model, set_config(cardinality=10**8, leaf="categorical"), None,
     ("limit",)),
    (".npy declaring 1e12 values", compiled_model, None,
     lambda name, data: npy_header((10**12,)) if name.endswith("log_std.npy") else data,
     ("declares shape (1000000000000,)", "holds")),
    (".npy declaring a negative shape", compiled_model, None,
     lambda name, data: npy_header((-5,)) if name.endswith("log_std.npy") else data, ("log_std",)),
    (".npy of objects", compiled_model, None,
     lambda name, data: npy_header((2,), "|O") if name.endswith("log_std.npy") else data, ("log_std",)),
    (".npy with a huge header", compiled_model, None,
     lambda name, data: (np.lib.format.magic(2, 0) + (10**6).to_bytes(4, "little") + b" " * 10**6
                         if name.endswith("log_std.npy") else data), ("log_std", "malformed .npy header")),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_crafted_files_are_refused_naming_the_cause(case: tuple, tmp_path: Path) -> None:
    name, factory, header, tensors, words = case
    path = crafted(tmp_path, factory(), "crafted", header, tensors)
    with pytest.raises(ModelFileError) as caught:
        osp.load(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_nested_and_oversized_headers(tmp_path: Path) -> None:
    model = compiled_model()
    deep = crafted(tmp_path, model, "deep", raw_header="[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="deep.ospn"):
        osp.load(deep)
    # 50 MB of spaces compress to a few kB: the declared size is refused before it is read
    source = tmp_path / "source.ospn"
    osp.save(model, source)
    content = entries(source)
    content["model.json"] = content["model.json"] + b" " * (50 * MiB)
    bomb = write(tmp_path / "bomb.ospn", content)
    assert bomb.stat().st_size < MiB
    with pytest.raises(ModelFileError, match="model.json declares 5242") as caught:
        osp.load(bomb)
    assert "limit" in str(caught.value)


def test_over_long_path_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 5000 + ".ospn")
    with pytest.raises(ModelFileError) as caught:
        osp.load(path)
    assert "xxxx" in str(caught.value)


def test_explicit_budget_is_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = compiled_model()
    path = tmp_path / "model.ospn"
    osp.save(model, path)
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", "1000")
    with pytest.raises(ModelFileError, match="more than the limit of 1000 bytes .OVERSPN_MEMORY_BUDGET"):
        osp.load(path)
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", "lots")
    with pytest.raises(ConfigurationError, match="OVERSPN_MEMORY_BUDGET"):
        osp.load(path)
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", str(10**9))
    assert isinstance(osp.load(path), osp.CompiledSPN)


def test_a_model_above_the_file_allowance_loads_with_an_explicit_budget(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from overspn import limits

    model = compiled_model()
    path = tmp_path / "model.ospn"
    osp.save(model, path)
    monkeypatch.setattr(limits, "MIN_FILE_ALLOWANCE", 1000)
    monkeypatch.setattr(limits, "FILE_RATIO", 1)
    with pytest.raises(ModelFileError, match="set OVERSPN_MEMORY_BUDGET to allow more"):
        osp.load(path)
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", str(10**9))
    assert isinstance(osp.load(path), osp.CompiledSPN)


@pytest.mark.parametrize("factory", [compiled_model, rat_model, lambda: rat_model("gaussian"), hclt_model],
                         ids=["compiled", "rat", "rat-gaussian", "hclt"])
def test_valid_files_of_every_kind_still_load_identically(factory: Callable[[], osp.SPNModule],
                                                          tmp_path: Path) -> None:
    model = factory()
    path = tmp_path / "model.ospn"
    osp.save(model, path)
    loaded = osp.load(path)
    x = np.full((1, model.num_vars), math.nan)
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(x), model.log_likelihood(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


_MEASURE = r"""
import json, resource, sys, time
import overspn as osp
results = []
for path in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        osp.load(path)
        outcome = "loaded"
    except osp.ModelFileError:
        outcome = "ModelFileError"
    except BaseException as error:
        outcome = type(error).__name__
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    results.append([path, outcome, seconds, grown])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_refusals_are_fast_and_small(tmp_path: Path) -> None:
    """Every crafted file is refused in a fresh process, each in < 5 s and < 200 MB of growth of the peak memory
    (in practice milliseconds and a few MB; printed with -s)."""
    paths = []
    for number, (_, factory, header, tensors, _) in enumerate(CASES):
        paths.append(str(crafted(tmp_path, factory(), f"case{number}", header, tensors)))
    env = {**os.environ, "PYTHONPATH": str(Path(osp.__file__).parents[1])}
    env.pop("OVERSPN_MEMORY_BUDGET", None)
    done = subprocess.run([sys.executable, "-c", _MEASURE, *paths], capture_output=True, text=True, env=env,
                          timeout=300, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (name, *_), (_, outcome, seconds, grown) in zip(CASES, results):
        print(f"{name:40s} {outcome:16s} {seconds * 1000:8.1f} ms {grown / MiB:8.1f} MiB")
        assert outcome == "ModelFileError", name
        assert seconds < 5, name
        assert grown < 200 * MiB, name


# -- the command line: crafted files and resource errors exit 2 with one line, bugs exit 1 ---------------------------


def _raiser(error: BaseException) -> Callable[[object], int]:
    def handler(args: object) -> int:
        raise error
    return handler


@pytest.fixture
def raising_command(monkeypatch: pytest.MonkeyPatch) -> Callable[[BaseException], None]:
    import types

    from overspn.cli import main as cli

    def install(error: BaseException) -> None:
        module = types.ModuleType("overspn.cli.crash")

        def register(subparsers: object) -> None:
            subparsers.add_parser("crash").set_defaults(handler=_raiser(error))  # type: ignore[attr-defined]
        module.register = register  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "overspn.cli.crash", module)
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "crash"))
    monkeypatch.delenv("OVERSPN_TRACEBACK", raising=False)
    return install


@pytest.mark.parametrize("error, status, words", [
    (MemoryError(), 2, ("needs more memory than is available", "crash command")),
    (OverflowError("int too large to convert to float"), 2, ("number out of range", "int too large")),
    (RecursionError("maximum recursion depth exceeded"), 2, ("nested too deeply",)),
    (KeyError("bug"), 1, ("internal error", "KeyError")),
], ids=["memory", "overflow", "recursion", "bug"])
def test_cli_exit_statuses(error: BaseException, status: int, words: tuple[str, ...],
                           raising_command: Callable[[BaseException], None],
                           capsys: pytest.CaptureFixture[str]) -> None:
    from overspn.cli import main as cli

    raising_command(error)
    assert cli.main(["crash"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("overspn crash: ")
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


@pytest.mark.parametrize("case", [case for case in CASES if case[0] in (
    "ten million variables", "huge floor", "compiled Gaussian log_std -1000", ".npy declaring 1e12 values")],
    ids=lambda case: case[0])
def test_cli_refuses_crafted_files_with_status_2(case: tuple, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from overspn.cli import main as cli

    name, factory, header, tensors, words = case
    path = crafted(tmp_path, factory(), "crafted", header, tensors)
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("overspn info: error: ") and str(path) in err
    long_path = tmp_path / ("y" * 5000 + ".ospn")
    assert cli.main(["info", str(long_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "yyyy" in err
