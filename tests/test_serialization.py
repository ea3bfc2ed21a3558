"""Model files: exact round trips, and every kind of bad file rejected with ModelFileError without unpickling."""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from strategies import all_states, random_structure

import overspn as osp

PARAMETRISATIONS = ("raw", "log", "softmax")
DTYPES = (torch.float32, torch.float64)


def trained_model(weights: str, dtype: torch.dtype, seed: int = 0, fast: bool = True
                  ) -> tuple[osp.CompiledSPN, np.ndarray]:
    """A model with every kind of parameter, moved by a few SGD steps so that its values are not the structure's."""
    rng = np.random.default_rng(seed)
    structure = random_structure(rng, min_vars=4, max_vars=5)
    gaussian_var = structure.num_vars
    components = [osp.Product([structure.root, osp.Gaussian(gaussian_var, m, s)]) for m, s in ((-1, 0.5), (1, 2))]
    root = osp.Sum(components, [0.3, 0.7])
    model = osp.compile(root, weights, dtype=dtype, fast=fast)
    states = all_states(structure.cardinalities)
    data = np.concatenate([states, rng.normal(size=(len(states), 1))], axis=1)
    data[rng.random(data.shape) < 0.1] = np.nan
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (-model.log_likelihood(data).mean()).backward()
        optimizer.step()
    return model, data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", PARAMETRISATIONS)
@pytest.mark.parametrize("fast", [True, False])
def test_round_trip_is_bit_identical(tmp_path: Path, weights: str, dtype: torch.dtype, fast: bool) -> None:
    model, data = trained_model(weights, dtype, fast=fast)
    path = tmp_path / "model.spn"
    osp.save(model, path)
    loaded = osp.load(path)
    assert (loaded.parametrisation, loaded.floor, loaded.dtype, loaded.num_vars, loaded.fast) == (
        weights, model.floor, dtype, model.num_vars, fast)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() and len(original) >= 4
    for key in original:
        assert restored[key].dtype == original[key].dtype
        assert torch.equal(restored[key], original[key]), key
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(data), model.log_likelihood(data))
        assert torch.equal(loaded.log_partition(), model.log_partition())
    if weights == "raw":
        assert [f for _, f in loaded.raw_weight_floors()] == [f for _, f in model.raw_weight_floors()]
        assert len(loaded.raw_weight_floors()) >= 1
    # saving the loaded model again gives the same file content
    osp.save(loaded, tmp_path / "again.spn")
    assert read_entries(tmp_path / "again.spn") == read_entries(path)


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_to_structure_round_trip_gives_equal_log_likelihoods(weights: str) -> None:
    for seed in range(4):
        model, data = trained_model(weights, torch.float64, seed)
        rebuilt = osp.compile(model.to_structure(), weights, dtype=torch.float64, num_vars=model.num_vars)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.log_likelihood(data), model.log_likelihood(data), rtol=1e-12,
                                       atol=1e-12)
            torch.testing.assert_close(rebuilt.log_unnormalised(data), model.log_unnormalised(data), rtol=1e-12,
                                       atol=1e-12)


def test_to_structure_preserves_sharing_and_names() -> None:
    shared = osp.Bernoulli(1, 0.3, name="shared")
    root = osp.Sum([osp.Product([osp.Bernoulli(0, 0.2), shared], name="a"),
                    osp.Product([osp.Indicator(0, 1), shared], name="b")], [1.0, 3.0], name="root")
    rebuilt = osp.compile(root).to_structure()
    assert rebuilt.name == "root" and [c.name for c in rebuilt.children] == ["a", "b"]
    assert rebuilt.children[0].children[1] is rebuilt.children[1].children[1]
    assert rebuilt.children[0].children[1].name == "shared"
    assert len(osp.topological_order(rebuilt)) == len(osp.topological_order(root))


# ------------------------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------------------------


def read_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_entries(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, osp.CompiledSPN]:
    model, _ = trained_model("raw", torch.float32)
    path = tmp_path_factory.mktemp("saved") / "model.spn"
    osp.save(model, path)
    return path, model


def assert_rejected(path: Path, *fragments: str) -> None:
    with pytest.raises(osp.ModelFileError) as error:
        osp.load(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_truncated_files(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    content = saved[0].read_bytes()
    for length in (0, 1, 3, 10, 100, len(content) // 2, len(content) - 22, len(content) - 1):
        path = tmp_path / f"truncated{length}.spn"
        path.write_bytes(content[:length])
        assert_rejected(path)


def test_corrupted_member_data(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    """A changed byte inside the compressed data of any member fails its checksum or its decoding."""
    content = saved[0].read_bytes()
    with zipfile.ZipFile(saved[0]) as archive:
        members = archive.infolist()
    assert len(members) >= 3
    for member in members:
        # data starts after the 30-byte local header, the name and the extra field
        start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
        # (the last byte is left alone: its unused padding bits may change without changing the content)
        for offset in (0, member.compress_size // 3, member.compress_size // 2):
            damaged = bytearray(content)
            damaged[start + offset] ^= 0x5A
            path = tmp_path / "damaged.spn"
            path.write_bytes(bytes(damaged))
            assert_rejected(path)


def test_random_byte_damage_never_escapes_as_another_error(tmp_path: Path,
                                                          saved: tuple[Path, osp.CompiledSPN]) -> None:
    """Anywhere in the file, a damaged byte gives ModelFileError or (in bytes no reader checks, such as a time
    stamp) the same model back, never another exception."""
    path, model = saved
    content = path.read_bytes()
    rng = np.random.default_rng(0)
    rejected = 0
    for position in rng.choice(len(content), size=60, replace=False):
        damaged = bytearray(content)
        damaged[position] ^= int(rng.integers(1, 256))
        target = tmp_path / "damaged.spn"
        target.write_bytes(bytes(damaged))
        try:
            loaded = osp.load(target)
        except osp.ModelFileError:
            rejected += 1
            continue
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)
    assert rejected > 30


def test_foreign_files(tmp_path: Path) -> None:
    zip_without_header = tmp_path / "other.zip"
    write_entries(zip_without_header, {"readme.txt": b"hello"})
    assert_rejected(zip_without_header, "no model.json")

    text = tmp_path / "notes.txt"
    text.write_text("model.json\nthis is not a model\n")
    assert_rejected(text, "not a zip archive")

    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    assert_rejected(pickled, "not a zip archive")

    torch_file = tmp_path / "model.pt"  # torch.save writes a zip of pickles
    torch.save({"weights": torch.ones(2)}, torch_file)
    assert_rejected(torch_file, "no model.json")

    empty = tmp_path / "empty.spn"
    empty.write_bytes(b"")
    assert_rejected(empty, "empty")

    with pytest.raises(osp.ModelFileError, match="no such model file"):
        osp.load(tmp_path / "missing.spn")
    with pytest.raises(osp.ModelFileError, match="no such model file"):
        osp.load(tmp_path)  # a folder


def rewrite_header(source: Path, target: Path, change: dict[str, object]) -> None:
    entries = read_entries(source)
    header = json.loads(entries["model.json"])
    header.update(change)
    entries["model.json"] = json.dumps(header).encode()
    write_entries(target, entries)


@pytest.mark.parametrize("change, fragments", [
    ({"version": 4}, ["version 4 is not supported", "newer"]),
    ({"version": 0}, ["version 0 is not supported"]),
    ({"version": "1"}, ["version '1' is not supported"]),
    ({"format": "something-else"}, ["not an overspn model file", "something-else"]),
    ({"dtype": "float16"}, ["dtype"]),
    ({"weights": "exp"}, ["weights"]),
    ({"structure": {"nodes": []}}, ["no nodes"]),
    ({"structure": {"types": ""}}, ["'types'", "non-empty string"]),
])
def test_wrong_header(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN], change: dict[str, object],
                      fragments: list[str]) -> None:
    path = tmp_path / "changed.spn"
    rewrite_header(saved[0], path, change)
    assert_rejected(path, *fragments)


def test_header_that_is_not_an_object(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    entries = read_entries(saved[0])
    for header in (b"[1, 2]", b"{not json", b"\xff\xfe"):
        entries["model.json"] = header
        write_entries(tmp_path / "bad.spn", entries)
        assert_rejected(tmp_path / "bad.spn")


def test_invalid_stored_structure_and_parameters(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    entries = read_entries(saved[0])
    header = json.loads(entries["model.json"])
    header["structure"]["weights"][-1] = -1.0  # the root's last weight: edges are stored in node order
    write_entries(tmp_path / "negative.spn", {**entries, "model.json": json.dumps(header).encode()})
    assert_rejected(tmp_path / "negative.spn", "negative weight")

    tensor = next(name for name in entries if name.startswith("tensors/"))
    reduced = {name: content for name, content in entries.items() if name != tensor}
    write_entries(tmp_path / "missing.spn", reduced)
    assert_rejected(tmp_path / "missing.spn", "is missing")

    original = np.load(io.BytesIO(entries[tensor]))
    buffer = io.BytesIO()
    np.save(buffer, np.ones(original.size + 3, dtype=original.dtype))
    write_entries(tmp_path / "shape.spn", {**entries, tensor: buffer.getvalue()})
    assert_rejected(tmp_path / "shape.spn", "shape")

    buffer = io.BytesIO()
    np.save(buffer, np.full_like(original, np.nan))
    write_entries(tmp_path / "nan.spn", {**entries, tensor: buffer.getvalue()})
    assert_rejected(tmp_path / "nan.spn", "NaN")


class _Payload:
    """Unpickling this object creates the file ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return Path.touch, (self.marker,)  # type: ignore[return-value]


def test_malicious_pickles_are_rejected_without_running(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    # the payload is real: unpickling it does run code
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "executed"
    payload = pickle.dumps(_Payload(marker))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(payload)
    assert_rejected(plain)

    # inside an otherwise valid model file, as an object array in place of a parameter
    entries = read_entries(saved[0])
    tensor = next(name for name in entries if name.startswith("tensors/"))
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    write_entries(tmp_path / "object_array.spn", {**entries, tensor: buffer.getvalue()})
    assert_rejected(tmp_path / "object_array.spn")

    # and as model.json itself
    write_entries(tmp_path / "pickled_header.spn", {**entries, "model.json": payload})
    assert_rejected(tmp_path / "pickled_header.spn")
    assert not marker.exists()


def test_files_of_format_version_2_still_load(tmp_path: Path, saved: tuple[Path, osp.CompiledSPN]) -> None:
    """Version 2 stored the structure as one object per node; such a file loads into the same model."""
    from overspn.structure_columns import read_columns, to_entries

    path, model = saved
    entries = read_entries(path)
    header = json.loads(entries["model.json"])
    header["version"] = 2
    header["structure"] = to_entries(read_columns(header["structure"]))
    assert "nodes" in header["structure"]
    write_entries(tmp_path / "v2.spn", {**entries, "model.json": json.dumps(header).encode()})
    loaded = osp.load(tmp_path / "v2.spn")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert osp.structure_to_dict(loaded.to_structure()) == osp.structure_to_dict(model.to_structure())


def test_column_form_in_another_topological_order_loads_the_same_model() -> None:
    """A column description whose nodes are in some other topological order (children after unrelated nodes, an
    unreachable leaf) reads into the structure the root describes, numbered as ``topological_order`` numbers it."""
    from overspn.engine.compiled import CompiledSPN
    from overspn.structure_columns import read_columns

    columns = {"types": "IIIIPPIS", "arity": [2, 2, 2], "children": [1, 0, 2, 3, 4, 5], "weights": [0.3, 0.7],
               "var": [0, 1, 0, 1, 7], "value": [0, 0, 1, 1, 1], "names": {"7": "root"}}
    loaded = CompiledSPN(read_columns(columns), dtype=torch.float64, num_vars=2)
    expected = osp.compile(osp.Sum([osp.Product([osp.Indicator(1, 0), osp.Indicator(0, 0)]),
                                    osp.Product([osp.Indicator(0, 1), osp.Indicator(1, 1)])], [0.3, 0.7],
                                   name="root"), dtype=torch.float64)
    states = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [math.nan, 1.0]], dtype=torch.float64)
    assert torch.equal(loaded.log_likelihood(states), expected.log_likelihood(states))
    assert osp.structure_to_dict(loaded.to_structure()) == osp.structure_to_dict(expected.to_structure())
