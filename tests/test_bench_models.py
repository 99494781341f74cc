"""`mnas bench` MODEL preparation: paths, corrupt models and unwritable model folders are bad input (issue 11, point 7)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from tflite_fixtures import conv_model_bytes

from mnas.bench.models import looks_like_path, prepare_model
from mnas.cli import main
from mnas.errors import MnasError


def _exit_code_and_stderr(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code), capsys.readouterr().err


@pytest.mark.parametrize(("spec", "is_path"), [
    ("m.tflite", True), ("./nonexistent/model", True), ("models/foo", True), ("models/foo_bar", True),
    ("mnasnet-a1", False), ("stem32,r1_k3_s11_e1_i32_o16_noskip,head1280", False),
    ("r3_k5_s22_e3_i24_o40_se0.25", False),
])
def test_path_rule(spec: str, is_path: bool) -> None:
    assert looks_like_path(spec) is is_path


@pytest.mark.parametrize("spec", ["./nonexistent/model", "models/foo", "models/foo_bar"])
def test_a_missing_path_without_the_suffix_is_a_missing_file(tmp_path: Path, spec: str) -> None:
    with pytest.raises(MnasError) as info:
        prepare_model(spec, tmp_path / "models")
    assert str(info.value) == f"{spec}: no such model file"
    assert info.value.exit_code == 2


def test_an_existing_file_without_the_suffix_is_still_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(conv_model_bytes())
    assert prepare_model(str(path), tmp_path / "models").path == path


def test_a_corrupt_tflite_is_bad_input_found_once_at_preparation(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(conv_model_bytes()[:300])  # right identifier, weights cut off
    with pytest.raises(MnasError) as info:
        prepare_model(str(cut), tmp_path / "models")
    assert str(info.value).startswith(f"{cut}: not a valid TFLite model: ")
    assert info.value.exit_code == 2
    code, err = _exit_code_and_stderr(["--db", str(tmp_path / "r.db"), "bench", str(cut), "--json"], capsys)
    assert code == 2
    assert err.startswith(f"mnas: error: {cut}: not a valid TFLite model: ") and err.count("\n") == 1
    assert not (tmp_path / "r.db").exists()


def test_cli_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code_and_stderr(["--db", str(tmp_path / "r.db"), "bench", "./nonexistent/model"], capsys)
    assert (code, err) == (2, "mnas: error: ./nonexistent/model: no such model file\n")


def test_models_folder_on_a_read_only_file_system_is_one_clear_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "ro" / "models"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self: Path, *args, **kwargs) -> None:
        if self == models:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    with pytest.raises(MnasError) as info:
        prepare_model("mnasnet-small", models, resolution=96, multiplier=0.35)
    assert str(info.value) == (f"{models}: cannot write generated models there (read-only file system); they are "
                               "kept next to the results store: choose a writable one with --db")
    assert info.value.exit_code == 2
    (tmp_path / "ro").mkdir()
    code, err = _exit_code_and_stderr(["--db", str(tmp_path / "ro" / "r.db"), "bench", "mnasnet-small",
                                       "--resolution", "96", "--multiplier", "0.35"], capsys)
    assert code == 2 and err == f"mnas: error: {info.value}\n"


def test_models_folder_that_cannot_be_created_names_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(MnasError) as info:
        prepare_model("mnasnet-small", blocker / "models", resolution=96, multiplier=0.35)
    assert str(info.value).startswith(f"{blocker / 'models'}: cannot write generated models there (")


def test_a_generated_model_is_written_once_and_reused(tmp_path: Path) -> None:
    first = prepare_model("mnasnet-small", tmp_path / "models", resolution=96, multiplier=0.35)
    again = prepare_model("mnasnet-small", tmp_path / "models", resolution=96, multiplier=0.35)
    assert first.path == again.path and first.sha256 == again.sha256 and first.path.parent == tmp_path / "models"
