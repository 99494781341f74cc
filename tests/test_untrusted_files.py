"""Files from elsewhere cannot run code or exhaust memory when mnas reads them.

* A CIFAR python folder given to `--dataset` is a set of pickles: they are read by a restricted
  unpickler that admits only the real batches' layout, so a pickle that would create a file
  when loaded creates nothing and is refused naming the file (library and `mnas search`).
* A stored predictor is JSON plus skops bytes, never a pickle: a store whose blob was replaced
  by a hostile pickle, or whose skops model names an untrusted type, creates nothing on
  loading or `mnas predict` and is refused naming the store and the predictor id.
* A table file is decompressed at most up to `MAX_TABLE_FILE_BYTES`, an IDX dataset file only
  up to the size its header declares: a gzip bomb is refused naming the file, without
  inflating it.
"""

from __future__ import annotations

import gzip
import pickle
import re
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_search_runs import RES, cli_env, make_predictor_db, run_cli

from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.predictor import table as table_module
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.registry import (
    MAGIC,
    encode_state,
    load_predictor,
    predictor_state,
    save_predictor,
)
from mnas.predictor.table import import_table, load_table
from mnas.search.datasets import CIFAR_TEST, CIFAR_TRAIN, load_cifar10, load_dataset, read_idx
from mnas.space.search_space import mnasnet

# ---------------------------------------------------------------------------- hostile files


class CreatesFileWhenUnpickled:
    """Unpickling this calls `open(path, "w")`: the file appearing is code having run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


class CreatesFileWhenSkopsLoaded:
    """skops restores this through `__setstate__`, which creates a file: code having run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, str]) -> None:
        Path(state["path"]).touch()


def hostile_pickle(marker: Path, protocol: int = 2) -> bytes:
    def build(path: Path) -> bytes:
        return pickle.dumps({b"label_names": [b"cat"], b"x": CreatesFileWhenUnpickled(path)}, protocol=protocol)

    # the pickle really is hostile: a plain load of the same pickle for another path creates it
    proof = marker.with_name(marker.name + ".proof")
    pickle.loads(build(proof))
    assert proof.exists()
    proof.unlink()
    return build(marker)


# ------------------------------------------------------------------------------------- CIFAR


def write_cifar(root: Path, per_batch: int = 4, *, old_numpy_name: bool = False) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 python folder in the real layout: dicts of bytes keys, `data` a (N, 3072) uint8
    array, `labels` a list of ints, `filenames` a list of bytes; pickle protocol 2 as the real
    (Python 2) files. `old_numpy_name`: numpy's reconstruct spelled `numpy.core` as old files do."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    xs, ys = [], []
    for index, name in enumerate((*CIFAR_TRAIN, *CIFAR_TEST)):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": f"training batch {index + 1} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{index}_{i}.png".encode() for i in range(per_batch)]}
        payload = pickle.dumps(batch, protocol=2)
        if old_numpy_name:
            payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            assert b"numpy.core.multiarray\n_reconstruct" in payload
        (root / name).write_bytes(payload)
        if name in CIFAR_TRAIN:
            xs.append(data)
            ys.extend(labels)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": per_batch,
                                                      b"num_vis": 3072}, protocol=2))
    return np.concatenate(xs), ys


@pytest.mark.parametrize("old_numpy_name", [False, True])
def test_a_real_layout_cifar_folder_still_loads(tmp_path: Path, old_numpy_name: bool) -> None:
    x, y = write_cifar(tmp_path / "cifar", old_numpy_name=old_numpy_name)
    ds = load_cifar10(tmp_path / "cifar")
    assert ds.class_names[:2] == ("airplane", "automobile") and ds.num_classes == 10
    assert ds.y.tolist() == y
    np.testing.assert_array_equal(ds.x, x.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0))
    assert len(load_dataset(str(tmp_path / "cifar"), "test")) == 4


@pytest.mark.parametrize("victim", ["batches.meta", "data_batch_3"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_cifar_pickle_creates_nothing_and_names_the_file(tmp_path: Path, victim: str, protocol: int) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)
    marker = tmp_path / "PWNED"
    (root / victim).write_bytes(hostile_pickle(marker, protocol))
    with pytest.raises(MnasError) as caught:
        load_dataset(str(root))
    assert not marker.exists()
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(rf"refused to load global io\.open from {re.escape(str(root / victim))}: .*", message), message


def test_a_hostile_cifar_folder_given_to_mnas_search_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)
    marker = tmp_path / "PWNED"
    (root / "data_batch_1").write_bytes(hostile_pickle(marker))
    run = run_cli(cli_env(), "--db", str(tmp_path / "mnas.db"), "search", "run", "--latency", "measured",
                  "--device", "host", "--dataset", str(root), "--samples", "1", "--steps", "1",
                  "--train-samples", "8", "--val-samples", "4", "--proxy-resolution", "8", cwd=tmp_path, timeout_s=120)
    assert run.rc != 0, run.describe()
    assert not marker.exists()
    assert len(run.stderr_lines) == 1, run.describe()
    assert f"refused to load global io.open from {root / 'data_batch_1'}" in run.stderr_lines[0]


def test_a_cifar_pickle_may_not_use_codecs_for_anything_but_latin1_bytes(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)
    # _codecs.encode("...", "latin1") is how Python 3 pickles bytes at protocol 2; nothing else
    payload = b"\x80\x02}q\x00(c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R" \
              b"q\x01K\x01u."
    (root / "batches.meta").write_bytes(payload)
    with pytest.raises(MnasError, match=r"^refused to load global _codecs\.encode called with encoding 'base64' "
                       rf"from {re.escape(str(root / 'batches.meta'))}: "):
        load_cifar10(root)


def test_an_idx_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    # an IDX labels file declaring 5 bytes whose gzip stream inflates to 32 MiB more
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big"))
        zeros = bytes(1 << 20)
        for _ in range(32):
            handle.write(zeros)
    tracemalloc.start()
    try:
        with pytest.raises(MnasError, match=rf"^{re.escape(str(path))}: more than 5 data bytes: expected 5 for shape"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a 32 MiB bomb"
    with gzip.open(path, "wb") as handle:  # a shape no memory holds is refused before reading
        handle.write(bytes([0, 0, 0x08, 3]) + (1 << 31).to_bytes(4, "big") * 3)
    with pytest.raises(MnasError, match=r"IDX shape \(2147483648, 2147483648, 2147483648\) declares \d+ bytes: "
                       r"expected at most 16 GiB"):
        read_idx(path)


# -------------------------------------------------------------------------------- predictors


def test_stored_predictors_round_trip_without_pickle(tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    lookup_id = make_predictor_db(db, every=25)
    store = ResultsStore(db)
    try:
        first = load_predictor(store, lookup_id)
        assert isinstance(first, LookupPredictor) and first.fallback is not None
        table = load_table(store, first.table_id)
        learned = LearnedPredictor.from_table(table, model="gbr")
        learned_id = save_predictor(store, learned, table.table_id)
        blobs = dict(store.read("SELECT id, params FROM predictors"))
        assert all(bytes(blob).startswith(MAGIC) for blob in blobs.values())
        again = load_predictor(store, learned_id)
        reloaded = load_predictor(store, lookup_id)
    finally:
        store.close()
    rng = np.random.default_rng(5)
    tokens = np.asarray([mnasnet().sample_tokens(rng) for _ in range(64)])
    archs = [mnasnet().decode(row) for row in tokens[:16]]
    assert isinstance(again, LearnedPredictor) and type(again.model_) is type(learned.model_)
    np.testing.assert_array_equal(again.predict_tokens(tokens), learned.predict_tokens(tokens))
    np.testing.assert_array_equal(again.predict_ms(archs), learned.predict_ms(archs))
    assert isinstance(reloaded, LookupPredictor) and reloaded.fallback is not None
    np.testing.assert_array_equal(reloaded.predict_tokens(tokens), first.predict_tokens(tokens))
    # the fallback itself: every layer of the space through the reloaded random forest
    layers = [layer for arch in archs for layer in arch.layers(RES)]
    np.testing.assert_array_equal(reloaded.fallback.predict_layers_ms(layers), first.fallback.predict_layers_ms(layers))


def tamper(db: Path, predictor_id: int, blob: bytes) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE predictors SET params = ? WHERE id = ?", (blob, predictor_id))


@pytest.fixture(scope="module")
def predictor_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    db = tmp_path_factory.mktemp("store") / "mnas.db"
    return db, make_predictor_db(db, every=25)


def copy_of(predictor_db: tuple[Path, int], tmp_path: Path) -> tuple[Path, int]:
    from test_search_runs import copy_db

    return copy_db(predictor_db[0], tmp_path / "mnas.db"), predictor_db[1]


def predict_refuses(db: Path, pid: int, marker: Path, expected: str) -> None:
    """`mnas predict` with the tampered predictor fails in one line holding `expected`, creating nothing."""
    run = run_cli(cli_env(), "--db", str(db), "predict", "mnasnet-a1", "--resolution", str(RES),
                  "--predictor", str(pid), cwd=db.parent, timeout_s=120)
    assert run.rc != 0 and not marker.exists(), run.describe()
    assert len(run.stderr_lines) == 1 and expected in run.stderr, run.describe()


def test_a_store_tampered_with_a_hostile_pickle_creates_nothing(predictor_db: tuple[Path, int], tmp_path: Path) -> None:
    db, pid = copy_of(predictor_db, tmp_path)
    marker = tmp_path / "PWNED"
    tamper(db, pid, hostile_pickle(marker, pickle.HIGHEST_PROTOCOL))
    store = ResultsStore(db)
    try:
        with pytest.raises(MnasError, match=rf"^{re.escape(str(db))}: stored predictor {pid} was saved in the old "
                           r"pickle format, .*refit it with `mnas table fit`$"):
            load_predictor(store, pid)
    finally:
        store.close()
    assert not marker.exists()
    predict_refuses(db, pid, marker, f"stored predictor {pid} was saved in the old pickle format")  # the CLI too


def test_a_store_with_hostile_skops_content_creates_nothing(predictor_db: tuple[Path, int], tmp_path: Path) -> None:
    import skops.io as sio

    db, pid = copy_of(predictor_db, tmp_path)
    marker = tmp_path / "PWNED"
    # the payload really is hostile: trusted, skops would create the file
    proof = sio.dumps(CreatesFileWhenSkopsLoaded(tmp_path / "proof"))
    sio.loads(proof, trusted=[f"{__name__}.CreatesFileWhenSkopsLoaded"])
    assert (tmp_path / "proof").exists()

    store = ResultsStore(db)
    try:
        state = predictor_state(load_predictor(store, pid))
        state["fallback"]["model"] = CreatesFileWhenSkopsLoaded(marker)
        tamper(db, pid, encode_state(state))
        with pytest.raises(MnasError, match=rf"^{re.escape(str(db))}: stored predictor {pid}: refused to load type\(s\) "
                           rf"{re.escape(__name__)}\.CreatesFileWhenSkopsLoaded from its model: "):
            load_predictor(store, pid)
    finally:
        store.close()
    assert not marker.exists()
    predict_refuses(db, pid, marker, f"stored predictor {pid}: refused to load type(s)")


def test_a_truncated_or_foreign_blob_is_refused_naming_the_store(predictor_db: tuple[Path, int], tmp_path: Path) -> None:
    db, pid = copy_of(predictor_db, tmp_path)
    with sqlite3.connect(db) as conn:
        blob = bytes(conn.execute("SELECT params FROM predictors WHERE id = ?", (pid,)).fetchone()[0])
    where = rf"^{re.escape(str(db))}: stored predictor {pid}"
    for bad, message in ((blob[:-10], "its parts do not add up"), (b"{}", "not a stored predictor"),
                         (MAGIC + b"not json\n", "its header is not valid JSON")):
        tamper(db, pid, bad)
        store = ResultsStore(db)
        try:
            with pytest.raises(MnasError, match=f"{where}: {message}"):
                load_predictor(store, pid)
        finally:
            store.close()


# ----------------------------------------------------------------------------- table import


def write_gzip_bomb(path: Path, size: int, chunk: int = 1 << 20) -> Path:
    """`size` bytes of zeros, gzip-compressed, written a chunk at a time (little memory here)."""
    zeros = bytes(chunk)
    with gzip.open(path, "wb", compresslevel=9) as handle:
        for _ in range(size // chunk):
            handle.write(zeros)
    return path


def test_a_gzip_bomb_is_refused_at_the_cap_without_inflating_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "MAX_TABLE_FILE_BYTES", 1 << 20)  # 1 MiB, so the test stays cheap
    bomb = write_gzip_bomb(tmp_path / "bomb.json.gz", 32 << 20)
    assert bomb.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(MnasError, match=rf"^latency table file {re.escape(repr(str(bomb)))}: more than 1 MiB once "
                           r"decompressed: expected a latency table"):
            import_table(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a 32 MiB bomb"
    plain = tmp_path / "big.json"
    plain.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(MnasError, match=r"more than 1 MiB: expected a latency table"):
        import_table(plain)


def test_mnas_table_import_refuses_a_gzip_bomb_at_the_default_cap(tmp_path: Path) -> None:
    bomb = write_gzip_bomb(tmp_path / "bomb.json.gz", 68 << 20)  # 68 MiB of zeros in about 70 KB
    run = run_cli(cli_env(), "--db", str(tmp_path / "mnas.db"), "table", "import", str(bomb), cwd=tmp_path,
                  timeout_s=120)
    assert run.rc != 0, run.describe()
    assert len(run.stderr_lines) == 1 and "more than 64 MiB once decompressed" in run.stderr and str(bomb) in run.stderr, \
        run.describe()
    assert table_module.MAX_TABLE_FILE_BYTES == 64 << 20  # what the README and the docstring say
