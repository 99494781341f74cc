"""Small frictions a new user meets (issue 15 point 6), each checked as the user meets it.

- `mnas devices probe -o device_configs/x.yaml` writes a config that names the phone's serial,
  so it wins over the shipped config of the same model instead of making the phone ambiguous;
- `mnas table export -o t.csv` writes CSV, an unknown suffix is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fake_adb import FakeAdbClient, FakePhone
from predictor_fakes import SyntheticDevice, write_key

from mnas.bench import adb as ad
from mnas.bench.device_config import (
    CONFIG_DIR_ENV,
    bind_to_phone,
    load_all,
    load_config,
    match_config,
    specificity,
)
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.cli import main
from mnas.errors import MnasError
from mnas.predictor.build import build_table
from mnas.predictor.fitting import fit_predictor
from mnas.predictor.registry import save_predictor
from mnas.predictor.table import load_table
from mnas.space.search_space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
REPO_CONFIGS = ROOT / "device_configs"
SERIAL = "98AX0A1B2C"
FINGERPRINT = "google/flame/flame:13/TP1A.221005.002/9012097:user/release-keys"


def run_mnas(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`mnas ARGS` through the console entry point: (exit code, stdout, stderr) as a user sees them."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ============================================================================ devices probe


def pixel4_props(**extra: str) -> dict[str, str]:
    return {**load_all(REPO_CONFIGS)["pixel4"].properties, **extra}


def test_a_config_that_names_the_phone_wins_over_the_shipped_one() -> None:
    shipped = load_all(REPO_CONFIGS)
    props = pixel4_props(**{"ro.serialno": SERIAL, "ro.build.fingerprint": FINGERPRINT})
    mine = bind_to_phone(dataclasses.replace(shipped["pixel4"], name="mine"), props)
    assert mine.properties["ro.serialno"] == SERIAL and mine.properties["ro.build.fingerprint"] == FINGERPRINT
    assert mine.match == {**shipped["pixel4"].match, "ro.serialno": (SERIAL,)}
    assert match_config(props, [*shipped.values(), mine]).name == "mine"
    # another Pixel 4 (another serial) still gets the shipped config
    assert match_config(pixel4_props(**{"ro.serialno": "OTHER"}), [*shipped.values(), mine]).name == "pixel4"
    # a phone without ro.serialno is bound by its build fingerprint, which still outranks the model
    by_build = bind_to_phone(dataclasses.replace(shipped["pixel4"], name="build"),
                             pixel4_props(**{"ro.build.fingerprint": FINGERPRINT}))
    assert by_build.match["ro.build.fingerprint"] == (FINGERPRINT,) and "ro.serialno" not in by_build.match
    assert match_config(props, [shipped["pixel4"], by_build]).name == "build"
    assert match_config(props, [by_build, mine]).name == "mine"  # serial beats fingerprint
    # more generic keys never outrank a serial: specificity orders serial, fingerprint, key count
    wide = dataclasses.replace(shipped["pixel4"], name="wide", match={
        **shipped["pixel4"].match, "ro.product.name": ("flame",), "ro.board.platform": ("msmnile",)})
    assert specificity(wide) < specificity(by_build) < specificity(mine)
    assert match_config(props, [wide, mine]).name == "mine"
    # --generic: recorded, not matched, so the phone is ambiguous again and the error says what wins
    generic = bind_to_phone(dataclasses.replace(shipped["pixel4"], name="generic"), props, generic=True)
    assert generic.match == shipped["pixel4"].match and generic.properties["ro.serialno"] == SERIAL
    with pytest.raises(MnasError, match=r"matches several device configs equally \(generic, pixel4\).*"
                                        r"a config whose match names the phone's ro.serialno wins"):
        match_config(props, [shipped["pixel4"], generic])


@pytest.fixture()
def phone_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Two Pixel 4s on a fake adb server (serials A1, B2) and a config folder holding the shipped configs."""
    configs = tmp_path / "device_configs"
    configs.mkdir()
    for path in REPO_CONFIGS.glob("*.yaml"):
        shutil.copy(path, configs / path.name)
    shipped = load_config(configs / "pixel4.yaml")
    phones = []
    for serial in ("A1", "B2"):
        phone = FakePhone(serial=serial, root=tmp_path / serial,
                          props=pixel4_props(**{"ro.serialno": serial, "ro.build.fingerprint": FINGERPRINT}))
        phone.set_cpus({core: shipped.max_freq_khz(core) for core in shipped.cores})
        phones.append(phone)
    client = FakeAdbClient(*phones)
    monkeypatch.setattr(ad, "adb_client", lambda timeout_s=30.0: client)
    monkeypatch.setattr(ad, "adb_unavailable_reason", lambda c: None)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(configs))
    return {"configs": configs}


def test_probe_into_the_config_folder_leaves_the_phone_unambiguous(phone_lab: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    output = phone_lab["configs"] / "mypixel.yaml"
    code, out, err = run_mnas(capsys, "devices", "probe", "A1", "-o", str(output), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert (payload["also_matched_by"], payload["matched_by"]) == (["pixel4"], "mypixel")
    assert payload["notes"] == ["the existing device config 'pixel4' also matches this phone; 'mypixel' wins"]
    written = load_config(output)
    assert written.properties["ro.serialno"] == "A1" and written.properties["ro.build.fingerprint"] == FINGERPRINT
    assert written.match["ro.serialno"] == ("A1",)
    # what `mnas devices` now says: A1 has its own config, its twin B2 keeps the shipped one, nothing ambiguous
    code, out, err = run_mnas(capsys, "devices", "--json")
    assert code == 0, err
    listed = {row["device_id"]: row["device_config"] for row in json.loads(out)["devices"]}
    assert (listed["A1"], listed["B2"]) == ("mypixel", "pixel4")
    assert [n for n in json.loads(out)["notes"] if n.startswith(("A1", "B2"))] == []


def test_probe_generic_or_outside_the_folder_says_so(phone_lab: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    generic = phone_lab["configs"] / "twin.yaml"
    code, out, err = run_mnas(capsys, "devices", "probe", "A1", "-o", str(generic), "--generic")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: phone 'Pixel 4' matches several device configs equally (pixel4, twin); make their "
                     "`match` sections distinct (a config whose match names the phone's ro.serialno wins over "
                     "the others)",
                     "note: the existing device config 'pixel4' also matches this phone"]
    generic.unlink()
    elsewhere = tmp_path / "elsewhere" / "mine.yaml"
    code, out, err = run_mnas(capsys, "devices", "probe", "A1", "-o", str(elsewhere))
    assert code == 0, err
    assert (f"note: {elsewhere} is outside the device-config folder {phone_lab['configs']}: mnas reads configs "
            "from there only (move the file there, or set MNAS_DEVICE_CONFIGS to its folder)") in err.splitlines()


# ============================================================================ table export

SMALL = SearchSpace(stages=((1, 16, 1, 1), (6, 24, 2, 2)))
RES = 64
CONFIG = BenchConfig(warmup_runs=1, num_runs=5)


def synthetic_store(db: Path, with_predictor: bool = True) -> SyntheticDevice:
    """A store with table 't' of SMALL at RES measured on a synthetic phone and a fitted lookup predictor."""
    device = SyntheticDevice()
    with ResultsStore(db) as store:
        build_table(SMALL, RES, [device], store, "t", CONFIG, writer=write_key, progress=False)
        if not with_predictor:
            return device
        # every layer of SMALL is in the table: no learned fallback to fit (it would take seconds)
        predictor, metrics = fit_predictor(load_table(store, "t"), fallback=False)
        save_predictor(store, predictor, predictor.table_id, metrics)
    return device


def test_table_export_writes_csv_and_refuses_an_unknown_suffix(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    synthetic_store(db, with_predictor=False)
    with ResultsStore(db) as store:
        table = load_table(store, "t")
    path = tmp_path / "t.csv"
    code, out, err = run_mnas(capsys, "--db", str(db), "table", "export", "t", "-o", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["format"] == "csv" and json.loads(out)["entries"] == len(table)
    frame = pd.read_csv(path)
    assert len(frame) == len(table) and set(frame["table"]) == {"t"} and set(frame["resolution"]) == {RES}
    by_key = frame.set_index("layer_key")
    for key, entry in table.entries.items():
        assert by_key.loc[key, "median_ms"] == pytest.approx(entry.median_ms, rel=1e-12)
        assert by_key.loc[key, "min_ms"] == pytest.approx(entry.measurement["min_ms"], rel=1e-12)
        assert by_key.loc[key, "runs"] == entry.runs
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", frame["measured_at"].iloc[0])
    assert set(frame["pinned_cores"].astype(str)) == {"7"}

    for name, what in (("t.txt", "unknown table file suffix '.txt'"), ("t.csv.bak", "unknown table file suffix "
                                                                                   "'.csv.bak'"),
                       ("table", "no file suffix")):
        code, out, err = run_mnas(capsys, "--db", str(db), "table", "export", "t", "-o", str(tmp_path / name))
        assert (code, err.strip()) == (2, f"mnas: error: {tmp_path / name}: {what}: expected one of .json, "
                                          ".json.gz, .csv")
        assert not (tmp_path / name).exists()

