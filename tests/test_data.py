"""Data loading (CSV files, user data sets, the benchmark download and cache) and atomic file writes."""

from __future__ import annotations

import http.server
import os
import re
import stat
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import overspn as osp
from overspn import atomic, csv_reader, data
from overspn.errors import ConfigurationError, DataError, ModelFileError

# ----------------------------------------------------------------------------------------------------------------
# CSV files
# ----------------------------------------------------------------------------------------------------------------


def test_load_csv_reads_values_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("0, 1.5 ,2\n\n3,4,-5e-1\n   \n")
    np.testing.assert_array_equal(data.load_csv(path), [[0, 1.5, 2], [3, 4, -0.5]])


def test_load_csv_single_column_and_single_row_are_2d(tmp_path: Path) -> None:
    (tmp_path / "col.csv").write_text("1\n0\n1\n")
    (tmp_path / "row.csv").write_text("1,0,1\n")
    assert data.load_csv(tmp_path / "col.csv", binary=True).shape == (3, 1)
    assert data.load_csv(tmp_path / "row.csv", binary=True).shape == (1, 3)


def test_missing_tokens_become_nan_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("1,,0\n?,1,nan\nNA,0,1\n")
    array = data.load_csv(path, binary=True, allow_missing=True)
    expected_missing = np.array([[0, 1, 0], [1, 0, 1], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(np.isnan(array), expected_missing)
    np.testing.assert_array_equal(array[~expected_missing], [1, 0, 1, 0, 1])
    with pytest.raises(DataError, match=r"m.csv, line 1, column 1: missing value \(an empty field\)"):
        data.load_csv(path, binary=True)


def test_the_first_bad_value_is_reported_even_when_later_lines_are_bad_too(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("0,1\n" * 5 + "0,7\n" + "0,x\n")
    with pytest.raises(DataError, match=r"line 6, column 1: value '7' is not binary"):
        data.load_csv(path, binary=True)


def test_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "exported.csv"
    path.write_bytes(b"\xef\xbb\xbf1,0\r\n0,1\r\n")
    np.testing.assert_array_equal(data.load_csv(path, binary=True), [[1, 0], [0, 1]])
    path.write_bytes(b"\xef\xbb\xbf1,0\r\n0,nan\r\n")  # the line-by-line reader too
    np.testing.assert_array_equal(np.isnan(data.load_csv(path, allow_missing=True)), [[0, 0], [0, 1]])


@pytest.mark.parametrize(("text", "hint"), [
    ("x0,x1\n1,0\n", "line 1, column 0: 'x0' is not a number (the file must not have a header row)"),
    ("1;0\n0;1\n", "line 1, column 0: '1;0' is not a number (fields must be separated by commas)"),
    ("1\t0\n", "(fields must be separated by commas)"),
])
def test_common_format_mistakes_get_a_hint(text: str, hint: str, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError) as caught:
        data.load_csv(tmp_path / "d.csv")
    assert hint in str(caught.value)


# A mix of the fields the reader meets: plain integers (the vectorised path), decimals and padded numbers (float()),
# every missing-value spelling, and numbers float() reads that numpy's own parser does not ("1_0").
FIELDS = ["0", "1", "0", "1", "2", "17", "007", "-0", "-1.5", "2.5e-3", " 1 ", "\t0", "", "?", "nan", "NaN", "NA",
          " ? ", "1_0", "123456789012345678"]


def _reference(path: Path, **options: bool) -> np.ndarray:
    """The file read by the line-by-line parser alone, as load_csv read every irregular file before."""
    with open(path, encoding="utf-8-sig", errors="replace") as stream:
        return data._parse_lines(stream, str(path), options.get("binary", False), options.get("allow_missing", False),
                                 options.get("discrete", False))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of about 500 characters, so that a test file of a few hundred kilobytes spans hundreds of them."""
    monkeypatch.setattr(csv_reader, "CHUNK_CHARS", 500)


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_chunked_read_with_missing_fields_equals_the_reference(line_end: str, tmp_path: Path,
                                                                small_chunks: None) -> None:
    rng = np.random.default_rng(0)
    lines = [",".join(rng.choice(FIELDS, 6)) for _ in range(3000)]
    for blank in rng.choice(len(lines), 20, replace=False):
        lines[blank] = rng.choice(["", "  ", "\t"])
    path = tmp_path / "missing.csv"
    path.write_bytes((line_end.join(lines) + line_end + "\n \n").encode())  # blank lines at the end too
    expected = _reference(path, allow_missing=True)
    array = data.load_csv(path, allow_missing=True)
    assert array.shape == expected.shape == (2980, 6) and array.dtype == np.float64 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, expected)  # NaN where NaN, and every value bit for bit...
    np.testing.assert_array_equal(np.signbit(array), np.signbit(expected))  # ... "-0" included
    assert np.isnan(array).mean() > 0.2
    with pytest.raises(DataError) as caught:
        _reference(path)
    with pytest.raises(DataError, match="missing value") as fast:
        data.load_csv(path)
    assert str(fast.value) == str(caught.value)


def test_integer_fields_are_exact_and_missing_ones_nan(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "states.csv"
    rng = np.random.default_rng(1)
    states = rng.integers(0, 10 ** rng.integers(1, 16, (2000, 1)), (2000, 5)).astype(np.float64)
    states[rng.random(states.shape) < 0.05] = np.nan
    path.write_text("\n".join(",".join("" if np.isnan(v) else str(int(v)) for v in row) for row in states))  # no end
    np.testing.assert_array_equal(data.load_csv(path, discrete=True, allow_missing=True), states)
    np.testing.assert_array_equal(data.load_csv(path, allow_missing=True), _reference(path, allow_missing=True))


@pytest.mark.parametrize(("bad", "options", "message"), [
    ("x", {}, "'x' is not a number$"),  # no header hint: the file has rows before it
    ("", {}, r"missing value \(an empty field\) not allowed here"),
    ("2", {"binary": True}, "value '2' is not binary"),
    ("inf", {"allow_missing": True}, "value 'inf' is not finite"),
])
def test_a_bad_field_deep_in_a_large_file_is_named_by_file_line_and_column(bad: str, options: dict[str, bool],
                                                                           message: str, tmp_path: Path) -> None:
    path = tmp_path / "large.csv"
    good = "0,1,0,1\n"
    # 70,000 lines before the bad one (the 10th blank: blank lines count as lines), and more after it
    path.write_text(good * 9 + "\n" + good * 69_990 + f"1,0,{bad},1\n" + good * 5000)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}, line 70001, column 2: {message}"):
        data.load_csv(path, **options)


def test_a_short_row_deep_in_a_large_file_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "large.csv"
    path.write_text("0,1,0,1\r\n" * 70_000 + "1,0,1\r\n" + "0,1,0,1\r\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}, line 70001: 3 columns, expected 4 as on the first"):
        data.load_csv(path)


@pytest.mark.parametrize("field", ["1\x00", "\u0663", "-?", "+nan", "NAN", "-0", "1_0", " 1 ", "1e400", "0x1", "\xa01"])
@pytest.mark.parametrize("allow_missing", [True, False])
def test_fields_at_the_edge_of_the_fast_parser_read_as_the_reference(field: str, allow_missing: bool, tmp_path: Path,
                                                                     small_chunks: None) -> None:
    path = tmp_path / "d.csv"
    path.write_text("0,1\n" * 300 + f"1,{field}\n" + "1,0\n" * 300)
    try:
        expected: np.ndarray | str = _reference(path, allow_missing=allow_missing)
    except DataError as error:
        expected = str(error)
    try:
        array = data.load_csv(path, allow_missing=allow_missing)
    except DataError as error:
        assert str(error) == expected
    else:
        assert isinstance(expected, np.ndarray)
        np.testing.assert_array_equal(array, expected)
        np.testing.assert_array_equal(np.signbit(array), np.signbit(expected))


@pytest.mark.parametrize("text", ["1,0\r\n0,1\r\n", "1,0\n0,1", "1,0\n0,1\n\n\n  \n", "\n\n1,0\r0,1\r",
                                  "1,0\r\n\r\n0,1"])
def test_line_ends_and_blank_lines_anywhere(text: str, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_bytes(text.encode())
    array = data.load_csv(tmp_path / "d.csv", binary=True)
    np.testing.assert_array_equal(array, [[1, 0], [0, 1]])
    assert array.flags.owndata and array.base is None  # shrunk in place, not a view of a larger buffer


def test_the_memory_budget_refuses_a_large_file_before_allocating(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(("0," * 999 + "1\n") * 1000)  # 2 MB of text, 8 MB as float64
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", str(4_000_000))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            data.load_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"{path}: 1,000 lines x 1,000 columns")
    assert "8,000,000 > 4,000,000 bytes" in message and "OVERSPN_MEMORY_BUDGET" in message
    assert peak < 3_000_000  # the bytes scanned for line ends, never the 8 MB array
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", "8e6")  # exactly enough
    assert data.load_csv(path).shape == (1000, 1000)


def test_reading_takes_the_result_plus_a_few_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rng = np.random.default_rng(2)
    text = np.full((50_000, 80), ord(","), dtype=np.uint8)  # "d,d,...,d\n": 4 MB of text, 16 MB as float64
    text[:, 0::2] = rng.choice(np.frombuffer(b"01?", dtype=np.uint8), (50_000, 40), p=[0.5, 0.49, 0.01])
    text[:, -1] = ord("\n")
    path.write_bytes(text.tobytes())
    tracemalloc.start()
    try:
        array = data.load_csv(path, binary=True, allow_missing=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(np.isnan(array), text[:, 0::2] == ord("?"))
    assert peak < array.nbytes + 16_000_000, f"peak {peak:,} bytes for a result of {array.nbytes:,}"


def test_memory_budget_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVERSPN_MEMORY_BUDGET", raising=False)
    assert 0 < data.memory_budget() <= 16 * 2 ** 30
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", "123456")
    assert data.memory_budget() == 123456
    monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", "2.5e9")
    assert data.memory_budget() == 2_500_000_000
    for wrong in ("lots", "-1", "0"):
        monkeypatch.setenv("OVERSPN_MEMORY_BUDGET", wrong)
        with pytest.raises(ConfigurationError, match=f"OVERSPN_MEMORY_BUDGET .* got '{wrong}'"):
            data.memory_budget()


def test_load_user_data_builds_a_checked_dataset(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("0,2\n1,0\n1,1\n")
    (tmp_path / "valid.csv").write_text("0,1\n")
    dataset = data.load_user_data(tmp_path / "train.csv", tmp_path / "valid.csv", kind="discrete")
    assert dataset.name == "train" and dataset.num_vars == 2 and dataset.test is None
    np.testing.assert_array_equal(dataset.valid, [[0, 1]])
    continuous = data.load_user_data(tmp_path / "train.csv", kind="continuous", name="mine")
    assert continuous.name == "mine"


def test_load_user_data_allows_missing_values_in_every_split(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("0,1\n1,?\n")
    (tmp_path / "test.csv").write_text("?,?\n1,0\n")
    dataset = data.load_user_data(tmp_path / "train.csv", test=tmp_path / "test.csv", allow_missing=True)
    assert np.isnan(dataset.train[1, 1]) and np.isnan(dataset.test[0]).all()


def test_check_continuous_ignores_missing_values_but_needs_one_observed(tmp_path: Path) -> None:
    data.check_continuous(np.array([[0.0, np.nan], [1.0, 2.0], [np.nan, 3.0]]), "a")
    with pytest.raises(DataError, match="column 1 is constant"):
        data.check_continuous(np.array([[0.0, np.nan], [1.0, 2.0], [np.nan, 2.0]]), "a")
    with pytest.raises(DataError, match="column 0 has no observed value"):
        data.check_continuous(np.array([[np.nan, 1.0], [np.nan, 2.0]]), "a")


def test_dataset_rejects_empty_and_non_2d_splits() -> None:
    with pytest.raises(DataError, match="test split has no rows"):
        data.Dataset("d", np.zeros((2, 2)), None, np.zeros((0, 2)))
    with pytest.raises(DataError, match="train split must be a 2-D array, got shape"):
        data.Dataset("d", np.zeros(3), None, None)
    with pytest.raises(DataError, match="valid split must be a 2-D array, got list"):
        data.Dataset("d", np.zeros((1, 3)), [[0, 1, 2]], None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# The benchmark download, served from this machine
# ----------------------------------------------------------------------------------------------------------------

NLTCS_VARS, NLTCS_SIZES = data.BINARY_DATASETS["nltcs"][0], data.BINARY_DATASETS["nltcs"][1:]


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields its URL, that folder and the paths asked."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    finally:
        server.shutdown()
        server.server_close()


def _serve_nltcs(served: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    (served / "nltcs").mkdir()
    splits = {}
    for split, size in zip(("train", "valid", "test"), NLTCS_SIZES):
        splits[split] = rng.integers(0, 2, (size, NLTCS_VARS)).astype(np.float64)
        np.savetxt(served / "nltcs" / f"nltcs.{split}.data", splits[split], fmt="%d", delimiter=",")
    return splits


def test_download_fills_the_cache_once(local_server: tuple[str, Path, list[str]], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, served, requests = local_server
    splits = _serve_nltcs(served, np.random.default_rng(0))
    monkeypatch.delenv("OVERSPN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_DOWNLOAD_URL", url)
    first = data.load_dataset("nltcs")
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(first, split), splits[split])
    assert len(requests) == 3
    second = data.load_dataset("nltcs")  # from the cache
    assert len(requests) == 3
    np.testing.assert_array_equal(second.test, splits["test"])


def test_a_bad_download_is_not_cached(local_server: tuple[str, Path, list[str]], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url, served, _ = local_server
    (served / "nltcs").mkdir()
    train_file = served / "nltcs" / "nltcs.train.data"
    monkeypatch.delenv("OVERSPN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_DOWNLOAD_URL", url)
    train_file.write_text("<html>rate limited</html>\n")
    with pytest.raises(DataError, match=r"nltcs.train.data, line 1, column 0: '<html>rate limited</html>' is not"):
        data.load_dataset("nltcs")
    train_file.write_text("0," * (NLTCS_VARS - 1) + "1\n")  # cut off after one row
    with pytest.raises(DataError, match=r"nltcs.train.data \(not cached\): .* 1 rows .* expected 16181 rows"):
        data.load_dataset("nltcs")
    assert not any(path.is_file() for path in (tmp_path / "cache").rglob("*"))
    np.savetxt(train_file, np.ones((NLTCS_SIZES[0], NLTCS_VARS)), fmt="%d", delimiter=",")
    with pytest.raises(DataError, match=r"cannot download .*nltcs.valid.data .*404"):
        data.load_dataset("nltcs")  # the train split downloads; the valid split is not served
    assert [path.name for path in (tmp_path / "cache").rglob("*.data")] == ["nltcs.train.data"]


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_failed_write_keeps_the_old_file_and_no_temporary(failing: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    atomic.atomic_write_json(target, {"run": 1})
    old = target.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "write":
        with pytest.raises(OSError, match="No space left"), atomic.atomic_output(target) as temporary:
            temporary.write_text('{"run": ')  # a part written, then the writer fails
            fail()
    else:
        monkeypatch.setattr(atomic.os, failing, fail)
        with pytest.raises(OSError, match="No space left"):
            atomic.atomic_write_json(target, {"run": 2})
    assert target.read_bytes() == old
    assert _leftovers(tmp_path, {"results.json"}) == []


def test_interrupt_during_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.ospn"
    osp.save(osp.compile(osp.mixture(3, 2)), target)
    old = target.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic.atomic_output(target) as temporary:
        temporary.write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt
    assert target.read_bytes() == old
    osp.load(target)
    assert _leftovers(tmp_path, {"model.ospn"}) == []


def test_save_failing_midway_leaves_the_previous_model_loadable(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.ospn"
    first = osp.compile(osp.mixture(3, 2, seed=0, perturbation=0.5))
    osp.save(first, target)

    def fail(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError):
        osp.save(osp.compile(osp.mixture(3, 4)), target)
    monkeypatch.undo()
    x = np.array([[0, 1, 1], [1, 0, np.nan]])
    np.testing.assert_allclose(osp.load(target).log_likelihood(x).detach(), first.log_likelihood(x).detach())
    assert _leftovers(tmp_path, {"model.ospn"}) == []


def test_atomic_write_keeps_permissions_of_the_replaced_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    atomic.atomic_write_text(target, "one")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # like open(path, "w"), not private
    target.chmod(0o640)
    atomic.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_atomic_output_keeps_the_suffix_for_writers_that_read_it(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(1, 1))
    axes.plot([0, 1], [1, 0])
    with atomic.atomic_output(tmp_path / "curve.png") as temporary:
        assert temporary.suffix == ".png" and temporary.parent == tmp_path
        figure.savefig(temporary)
    plt.close(figure)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftovers(tmp_path, {"curve.png"}) == []


def test_writing_onto_a_folder_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        atomic.atomic_write_text(tmp_path / "out", "x")
    assert (tmp_path / "out").is_dir()
    assert _leftovers(tmp_path, {"out"}) == []


def test_saturated_parameters_save_and_load_exactly(tmp_path: Path) -> None:
    """Trained to the edge (p rounds to 1, a probability underflows to 0, std to 0), the model still round-trips."""
    import torch

    leaves = [osp.Bernoulli(0, 0.3), osp.Categorical(1, [0.2, 0.3, 0.5]), osp.Gaussian(2, 0.0, 1.0)]
    model = osp.compile(osp.Product(leaves), dtype=torch.float64)
    with torch.no_grad():
        model.discrete.bernoulli_logit.fill_(45.0)
        model.discrete.categorical_logits[0, 0] = -800.0
        model.gaussian.log_std.fill_(-700.0)  # std 1e-304: the smallest spreads float64 still represents
    osp.save(model, tmp_path / "edge.ospn")
    loaded = osp.load(tmp_path / "edge.ospn")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = np.array([[1.0, 2.0, np.nan], [0.0, 1.0, np.nan]])
    np.testing.assert_array_equal(loaded.log_likelihood(x).detach(), model.log_likelihood(x).detach())
    with torch.no_grad():
        model.gaussian.log_std.fill_(-750.0)  # std underflows to 0: every observed value has density 0 or NaN
    with pytest.raises(osp.ModelFileError, match="log_std"):
        osp.save(model, tmp_path / "beyond.ospn")
    assert not (tmp_path / "beyond.ospn").exists()


def test_loading_never_unpickles(tmp_path: Path) -> None:
    """A model file whose parameter is a pickled object array is rejected, and the pickle is never run."""
    import io
    import zipfile

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    source = tmp_path / "model.ospn"
    osp.save(osp.compile(osp.mixture(2, 2)), source)
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(buffer, "w") as copy:
        for entry in original.namelist():
            content = original.read(entry)
            if entry.endswith(".npy"):
                array = io.BytesIO()
                np.save(array, np.array([Payload()], dtype=object), allow_pickle=True)
                content = array.getvalue()
            copy.writestr(entry, content)
    (tmp_path / "evil.ospn").write_bytes(buffer.getvalue())
    with pytest.raises(ModelFileError, match="evil.ospn"):
        osp.load(tmp_path / "evil.ospn")
    assert not marker.exists()
