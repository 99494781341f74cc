"""Stored predictors: save them to the results database, list them, load them back.

A predictor is stored as a state (format version `STATE_VERSION`; a lookup predictor's table
stays in the store and is referenced by id) plus the table it came from and its metrics as
JSON. Listing and loading only read: they go through the store's plain reads, never its write
transaction, so they neither wait for nor hold up a table build or a calibration writing to the
same database.

The stored state is never a pickle: unpickling runs whatever callables the bytes name, so a
tampered database would run code on `mnas predict` or a search. The blob (`encode_state`) is
`MAGIC`, one line of JSON (every plain field), then each scikit-learn model as `skops.io` bytes.
skops rebuilds an estimator from its parameters and arrays without calling anything the file
names, and `decode_state` loads it only after checking that every type it holds is one a
fitted random forest or gradient boosting model holds (`TRUSTED_TYPES` beyond skops' own
safe defaults); anything else is refused, naming the store and the predictor. Rows saved in the
old pickle format (version 1) are refused the same way, never unpickled: refit them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from mnas.errors import MnasError
from mnas.json_safe import json_safe
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.calibration import Calibration
from mnas.predictor.features import FEATURE_NAMES
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.table import LatencyTable, Store, ensure_schema, load_table
from mnas.space.search_space import SearchSpace

__all__ = ["MAGIC", "STATE_VERSION", "TRUSTED_TYPES", "ReadStore", "decode_state", "encode_state", "list_predictors",
           "load_predictor", "predictor_dtype", "predictor_from_state", "predictor_state", "read_records",
           "save_predictor"]

STATE_VERSION = 2  # 1: a pickled dict (refused since: unpickling can run code)
MAGIC = b"mnas-predictor\n"  # what every stored blob starts with (a pickle starts with b"\x80")
# Types a fitted RandomForestRegressor / GradientBoostingRegressor holds that skops does not
# trust by default; the estimators, numpy arrays and dtypes, and builtins are in its defaults.
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
# A predictor's dtype is its table's (`TableMeta.dtype`, kept in the table's JSON metadata); a table
# stored before the field existed, or no table at all, means float32.
TABLE_DTYPE_SQL = "COALESCE(json_extract(t.meta, '$.dtype'), 'float32')"


def _model_classes() -> dict[str, type]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    return {"rf": RandomForestRegressor, "gbr": GradientBoostingRegressor}


class ReadStore(Store, Protocol):
    """A `Store` that also reads outside any write transaction (`ResultsStore.read`)."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


# ------------------------------------------------------------------------------ state

def _calibration_state(calibration: Calibration | None) -> dict[str, Any] | None:
    return None if calibration is None else asdict(calibration)


def _calibration_from_state(state: dict[str, Any]) -> Calibration | None:
    return Calibration(**state["calibration"]) if state.get("calibration") else None


def _learned_state(p: LearnedPredictor) -> dict[str, Any]:
    import sklearn

    return {"version": STATE_VERSION, "kind": "learned", "model": p.model_, "model_name": p.model,
            "target": p.target, "resolution": p.resolution, "num_classes": p.num_classes,
            "calibration": _calibration_state(p.calibration_), "feature_names": list(FEATURE_NAMES),
            "trained_on": dict(p.trained_on_), "sklearn_version": sklearn.__version__}


def predictor_state(predictor: AdditivePredictor) -> dict[str, Any]:
    """Everything needed to rebuild `predictor` (a lookup predictor's table stays in the store)."""
    if isinstance(predictor, LearnedPredictor):
        return _learned_state(predictor)
    if isinstance(predictor, LookupPredictor):
        return {"version": STATE_VERSION, "kind": "lookup", "table": predictor.table.meta.name,
                "statistic": predictor.statistic, "calibration": _calibration_state(predictor.calibration_),
                "fallback": None if predictor.fallback is None else _learned_state(predictor.fallback)}
    raise MnasError(f"predictor kind {getattr(predictor, 'kind', type(predictor).__name__)!r}: expected lookup or learned")


def _learned_from_state(state: dict[str, Any], space: SearchSpace | None,
                        table_id: int | None = None) -> LearnedPredictor:
    if state.get("feature_names") != list(FEATURE_NAMES):
        raise MnasError("stored learned predictor: its feature names differ from this version's: expected a predictor "
                        "fitted by this mnas version (refit it with `mnas table fit`)")
    trained_on = dict(state.get("trained_on") or {})
    if table_id is not None:  # stored before `trained_on` named its table
        trained_on.setdefault("table_id", table_id)
    predictor = LearnedPredictor(state["model_name"], target=state["target"], seed=int(trained_on.get("seed", 0)),
                                 resolution=state["resolution"], num_classes=state["num_classes"], space=space,
                                 statistic=str(trained_on.get("statistic", "median")))
    predictor.model_ = state["model"]  # restoring fitted state, as unpickling an estimator does
    predictor.trained_on_ = trained_on
    predictor.calibration_ = _calibration_from_state(state)
    return predictor


def predictor_from_state(state: dict[str, Any], table: LatencyTable | None = None,
                         space: SearchSpace | None = None, table_id: int | None = None) -> AdditivePredictor:
    """The predictor `predictor_state` described; `table`: a lookup predictor's; `table_id`: where it is stored."""
    if state.get("version") != STATE_VERSION:
        raise MnasError(f"stored predictor: state version {state.get('version')!r}: expected {STATE_VERSION}")
    if state.get("kind") == "learned":
        return _learned_from_state(state, space, table_id)
    if state.get("kind") == "lookup":
        if table is None:
            raise MnasError("stored lookup predictor: its latency table is missing: expected the table it was fitted on")
        fallback = _learned_from_state(state["fallback"], space) if state.get("fallback") else None
        predictor = LookupPredictor(table, fallback=fallback, space=space, statistic=state.get("statistic", "median"))
        predictor.calibration_ = _calibration_from_state(state)
        return predictor
    raise MnasError(f"stored predictor: kind {state.get('kind')!r}: expected 'lookup' or 'learned'")


# ------------------------------------------------------------------------------ the blob

def _json_value(value: Any) -> Any:
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()  # a numpy scalar
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_state(state: dict[str, Any]) -> bytes:
    """`MAGIC`, the state as one JSON line with each learned model replaced by {"skops": i},
    then those models' `skops.io` bytes (their lengths are in the JSON's `models`)."""
    import skops.io as sio

    models: list[bytes] = []

    def plain(part: dict[str, Any] | None) -> dict[str, Any] | None:
        if part is None or part.get("kind") != "learned":
            return part
        models.append(sio.dumps(part["model"]))
        return {**part, "model": {"skops": len(models) - 1}}

    body = plain(dict(state))
    if body is not None and body.get("kind") == "lookup":
        body["fallback"] = plain(body.get("fallback"))
    header = json.dumps({"version": STATE_VERSION, "state": body, "models": [len(m) for m in models]},
                        sort_keys=True, allow_nan=False, default=_json_value).encode()
    return MAGIC + header + b"\n" + b"".join(models)


def _load_model(data: bytes, model_name: Any, where: str) -> Any:
    """One skops payload -> the estimator `model_name` names, refusing any type not trusted."""
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # not a skops file: a zip or its schema that does not parse
        raise MnasError(f"{where}: its model is not readable ({type(exc).__name__}): expected skops bytes "
                        "written by `mnas table fit`") from None
    refused = sorted(untrusted - set(TRUSTED_TYPES))
    if refused:
        raise MnasError(f"{where}: refused to load type(s) {', '.join(refused)} from its model: expected only "
                        "the types a fitted random forest or gradient boosting model holds (the store may have "
                        "been tampered with; refit it with `mnas table fit`)")
    expected = _model_classes().get(model_name) if isinstance(model_name, str) else None
    if expected is None:
        raise MnasError(f"{where}: model {model_name!r}: expected one of {sorted(_model_classes())}")
    try:
        model = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # a model from another scikit-learn version may fail many ways
        raise MnasError(f"{where}: its model cannot be loaded ({type(exc).__name__}: {exc}): expected the "
                        "scikit-learn version it was saved with; refit it with `mnas table fit`") from None
    if type(model) is not expected:
        raise MnasError(f"{where}: its model is a {type(model).__name__}: expected a {expected.__name__}")
    return model


def decode_state(blob: bytes, where: str) -> dict[str, Any]:
    """The state `encode_state` wrote, its models loaded by skops against `TRUSTED_TYPES`.

    Nothing in `blob` is unpickled: an old pickle-format row, or anything not starting with
    `MAGIC`, is refused with one line naming `where` (the store and predictor id)."""
    if not blob.startswith(MAGIC):
        if blob[:1] == b"\x80":
            raise MnasError(f"{where} was saved in the old pickle format, which can run code when loaded, so it "
                            "is not read: refit it with `mnas table fit`")
        raise MnasError(f"{where}: not a stored predictor (starts {blob[:16]!r}): expected one written by "
                        f"`mnas table fit` (state version {STATE_VERSION})")
    end = blob.find(b"\n", len(MAGIC))
    try:
        header = json.loads(blob[len(MAGIC):end if end >= 0 else len(blob)])
        version, state, sizes = header["version"], header["state"], header["models"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise MnasError(f"{where}: its header is not valid JSON ({type(exc).__name__}): expected one "
                        "written by `mnas table fit`") from None
    if version != STATE_VERSION:
        raise MnasError(f"{where}: state version {version!r}: expected {STATE_VERSION}; refit it with `mnas table fit`")
    if (not isinstance(state, dict) or not isinstance(sizes, list)
            or not all(isinstance(n, int) and n >= 0 for n in sizes) or end + 1 + sum(sizes) != len(blob)):
        raise MnasError(f"{where}: its parts do not add up to its {len(blob)} bytes: expected one written by "
                        "`mnas table fit`")
    offsets = [end + 1 + sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def loaded(part: Any) -> Any:
        if not isinstance(part, dict) or part.get("kind") != "learned":
            return part
        ref = part.get("model")
        index = ref.get("skops") if isinstance(ref, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(sizes):
            raise MnasError(f"{where}: its learned model reference {ref!r}: expected an index into its models")
        data = blob[offsets[index]:offsets[index + 1]]
        return {**part, "model": _load_model(data, part.get("model_name"), where)}

    state = loaded(state)
    if state.get("kind") == "lookup":
        state["fallback"] = loaded(state.get("fallback"))
    return state


# ------------------------------------------------------------------------------ the store

def save_predictor(store: Store, predictor: AdditivePredictor, table_id: int | None,
                   metrics: dict[str, Any] | None = None) -> int:
    """Store the predictor (`encode_state`: JSON and skops, no pickle), the table it came from and
    its metrics; returns its id."""
    ensure_schema(store)
    blob = encode_state(predictor_state(predictor))
    metrics = dict(metrics or {})
    with store.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO predictors (table_id, kind, params, metrics, created) VALUES (?, ?, ?, ?, ?)",
            (table_id, predictor.kind, blob, json.dumps(json_safe(metrics), sort_keys=True), time.time()))
        predictor_id = int(cursor.lastrowid)
    predictor.predictor_id = predictor_id
    predictor.metrics = metrics
    if table_id is not None:
        rows = store.read(f"SELECT {TABLE_DTYPE_SQL} FROM latency_tables t WHERE t.id = ?", (table_id,))
        predictor.dtype = str(rows[0][0]) if rows else "float32"
    return predictor_id


def list_predictors(store: ReadStore) -> list[dict[str, Any]]:
    """One row per stored predictor: id, kind, table, device, runtime, resolution, metrics, created, dtype."""
    ensure_schema(store)
    return read_records(
        store, "SELECT p.id, p.kind, p.table_id, t.name, t.device, t.runtime, t.version, t.resolution, p.metrics, "
        f"p.created, {TABLE_DTYPE_SQL} FROM predictors p LEFT JOIN latency_tables t ON t.id = p.table_id ORDER BY p.id",
        (), ("id", "kind", "table_id", "table", "device", "runtime", "runtime_version", "resolution", "metrics",
             "created", "dtype"))


def predictor_dtype(predictor: Any) -> str:
    """The dtype of the models `predictor` predicts: its stored table's, else float32 (shipped tables)."""
    return str(getattr(predictor, "dtype", "float32"))


def read_records(store: ReadStore, sql: str, params: Sequence[Any], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The query's rows as dicts named by `keys`, the JSON `metrics` column parsed (predictors and evals)."""
    records = [dict(zip(keys, row, strict=True)) for row in store.read(sql, params)]
    for record in records:
        record["metrics"] = json.loads(record["metrics"])
    return records


def load_predictor(store: ReadStore, predictor_id: int | None = None, *, device: str | None = None,
                   resolution: int | None = None, runtime: str | None = None, kind: str | None = None,
                   space: SearchSpace | None = None, dtype: str | None = None) -> AdditivePredictor:
    """A stored predictor by id, or the latest one whose table matches device/resolution/runtime/kind/dtype."""
    ensure_schema(store)
    asked = {"p.id": predictor_id, "t.device": device, "t.resolution": resolution, "t.runtime": runtime,
             "p.kind": kind, TABLE_DTYPE_SQL: dtype}
    where = [f"{column} = ?" for column, value in asked.items() if value is not None]
    sql = (f"SELECT p.id, p.table_id, p.params, p.metrics, {TABLE_DTYPE_SQL} FROM predictors p LEFT JOIN latency_tables t "
           "ON t.id = p.table_id" + (" WHERE " + " AND ".join(where) if where else "") +
           " ORDER BY p.created DESC, p.id DESC LIMIT 1")
    found = store.read(sql, [value for value in asked.values() if value is not None])
    if not found:
        # float32 is every table's dtype unless said otherwise: only another dtype is worth naming
        wanted = ", ".join(f"{'dtype' if column == TABLE_DTYPE_SQL else column.split('.')[1]}={value}"
                           for column, value in asked.items()
                           if value is not None and not (column == TABLE_DTYPE_SQL and value == "float32")) or "any"
        raise MnasError(f"no stored predictor matches {wanted}: expected one fitted with `mnas table fit`")
    pid, table_id, blob, metrics, table_dtype = found[0]
    where = f"{getattr(store, 'path', 'results store')}: stored predictor {pid}"
    state = decode_state(bytes(blob), where)
    table_id = None if table_id is None else int(table_id)
    table = load_table(store, table_id) if state.get("kind") == "lookup" and table_id is not None else None
    try:
        predictor = predictor_from_state(state, table=table, space=space, table_id=table_id)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited state
        raise MnasError(f"{where}: its state is malformed ({type(exc).__name__}: {exc}): expected one "
                        "written by `mnas table fit`; refit it") from None
    predictor.predictor_id = int(pid)
    predictor.metrics = json.loads(metrics)
    predictor.dtype = str(table_dtype)
    return predictor
