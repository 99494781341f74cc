"""Small frictions a new user meets (issue 15 point 6), each checked as the user meets it.

- `mnas devices probe -o device_configs/x.yaml` writes a config that names the phone's serial,
  so it wins over the shipped config of the same model instead of making the phone ambiguous;
- `mnas table export -o t.csv` writes CSV, an unknown suffix is refused by name;
- Ctrl-C during `mnas table calibrate/eval` says how to resume (exit 130), and the re-run
  measures only what is missing, its progress bar starting at the stored count;
- the README calls `mnas` one way and its Python API example runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_run import run_mnas
from fake_adb import FakeAdbClient, FakePhone
from predictor_fakes import SyntheticDevice, write_arch_text, write_key

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
from mnas.errors import MnasError
from mnas.predictor.build import build_table
from mnas.predictor.endtoend import CALIBRATION, EVALUATION, sample_archs
from mnas.predictor.fitting import fit_predictor
from mnas.predictor.registry import save_predictor
from mnas.predictor.table import load_table
from mnas.space.search_space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
REPO_CONFIGS = ROOT / "device_configs"
SERIAL = "98AX0A1B2C"
FINGERPRINT = "google/flame/flame:13/TP1A.221005.002/9012097:user/release-keys"


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


# ============================================================================ Ctrl-C in calibrate / eval


@pytest.mark.parametrize(("command", "stream", "samples"), [("calibrate", CALIBRATION, 6), ("eval", EVALUATION, 4)])
def test_ctrl_c_says_how_to_resume_and_the_rerun_measures_only_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: str, stream: str, samples: int) -> None:
    db = tmp_path / "mnas.db"
    synthetic_store(db)
    interrupted_after = 2
    device = SyntheticDevice(fail_after=interrupted_after, failure=KeyboardInterrupt())
    monkeypatch.setattr("mnas.cli_table._devices", lambda *args, **kwargs: [device])
    monkeypatch.setattr("mnas.cli_table._space", lambda name: SMALL)
    # the networks are written as text for the synthetic device (calibrate/eval pick the writer by --dtype)
    monkeypatch.setattr("mnas.predictor.build.network_writer", lambda dtype: write_arch_text)
    args = ("--db", str(db), "table", command, "--device", "fakephone", "--samples", str(samples),
            "--resolution", str(RES), "--repeats", "1", "--runs", "5", "--warmup", "1", "--min-secs", "0")

    code, out, err = run_mnas(capsys, *args)
    assert code == 130, err
    assert err.splitlines()[-1] == (
        f"mnas: interrupted: {interrupted_after} of {samples} {stream} measurements are stored: run the same "
        f"`mnas table {command}` again to resume (stored networks are reused, only the rest is measured)")
    assert f" 0/{samples} [" in err  # the first run's bar started from nothing
    first = list(device.calls)
    assert len(first) == interrupted_after

    code, out, err = run_mnas(capsys, *args)
    assert code == 0, err
    assert f" {interrupted_after}/{samples} [" in err  # the bar starts at the stored count
    rerun = device.calls[len(first):]
    # the predictor was never calibrated, so the eval stream excludes nothing either
    expected = [f"arch {RES} {arch}" for arch in sample_archs(SMALL, samples, 0, stream)]
    assert sorted(first + rerun) == sorted(expected)  # every network once: none twice, none lost
    assert len(rerun) == samples - interrupted_after


class ContendedDevice(SyntheticDevice):
    """A synthetic phone whose figures come back flagged contended (as on a busy host)."""

    def benchmark(self, model_path: Path, config: BenchConfig) -> Any:
        measurement = super().benchmark(model_path, config)
        measurement.extra["contended"] = True
        return measurement


def test_ctrl_c_says_when_stored_figures_will_be_taken_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Contended figures are stored but never reused (the reuse rule): the resume line says so, and
    the re-run measures every network again, its bar starting at 0."""
    db = tmp_path / "mnas.db"
    synthetic_store(db)
    device = ContendedDevice(fail_after=2, failure=KeyboardInterrupt())
    monkeypatch.setattr("mnas.cli_table._devices", lambda *args, **kwargs: [device])
    monkeypatch.setattr("mnas.cli_table._space", lambda name: SMALL)
    # the networks are written as text for the synthetic device (calibrate/eval pick the writer by --dtype)
    monkeypatch.setattr("mnas.predictor.build.network_writer", lambda dtype: write_arch_text)
    args = ("--db", str(db), "table", "calibrate", "--device", "fakephone", "--samples", "5",
            "--resolution", str(RES), "--repeats", "1", "--runs", "5", "--warmup", "1", "--min-secs", "0")
    code, out, err = run_mnas(capsys, *args)
    assert code == 130, err
    assert err.splitlines()[-1] == (
        "mnas: interrupted: 2 of 5 calibration measurements are stored (2 flagged contended or throttled: "
        "measured again): run the same `mnas table calibrate` again to resume (stored networks are reused, "
        "only the rest is measured)")
    code, out, err = run_mnas(capsys, *args)
    assert code == 0, err
    assert " 0/5 [" in err and len(device.calls) == 2 + 5


# ============================================================================ README


README = ROOT / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_readme_calls_mnas_one_way() -> None:
    """Once the quick start activated the venv, every command line says `mnas ...`."""
    lines = [line.strip() for block in code_blocks("bash") for line in block.splitlines()]
    assert "bash .ci/install && source .venv/bin/activate" in lines
    assert [line for line in lines if re.search(r"\.venv/bin/(mnas|python)", line)] == []
    assert sum(1 for line in lines if re.match(r"^(\w+=\S+ )*mnas ", line)) > 30


def test_the_readme_python_api_example_runs() -> None:
    (block,) = [b for b in code_blocks("python") if "shipped_device_predictor" in b]
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["3.887M params, 311.6M mult-adds", "Pixel 1: 75.6 ms predicted"]
    assert re.fullmatch(r"this host: \d+\.\d\d ms \(headline statistic of 10 runs\)", lines[2])


def test_shell_completion_as_the_readme_documents_it() -> None:
    """`_MNAS_COMPLETE=bash_source mnas` prints the bash hook; the hook's queries complete commands and options."""
    command = [sys.executable, "-c", "from mnas.cli import main; main()"]

    def complete(**env: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "complete -o nosort -F _mnas_completion mnas" in complete(_MNAS_COMPLETE="bash_source")
    assert complete(_MNAS_COMPLETE="bash_complete", COMP_WORDS="mnas table cal", COMP_CWORD="2") == \
        "plain,calibrate\n"
    assert complete(_MNAS_COMPLETE="bash_complete", COMP_WORDS="mnas table export t --ou",
                    COMP_CWORD="4") == "plain,--output\n"
