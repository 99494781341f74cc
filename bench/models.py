"""What `mnas bench` accepts as MODEL: a `.tflite` file, a zoo name or an arch string.

Which one a MODEL is: a file when it ends with `.tflite`, names an existing path, or
contains a path separator (`/`, or the platform's own); zoo names and arch strings never
contain one. So `./nonexistent/model` or `models/foo` is a missing file ("no such model
file"), not an arch string with a bad block token. Anything else is a zoo name or an arch
string (`mnas.space.resolve`).

A `.tflite` file is checked once, here, by parsing its flatbuffer (`space/tflite_reader.py`:
identifier, schema version, a subgraph with tensors and operators, every buffer inside the
file): a corrupt model is bad input (MnasError, exit 2) before any device is touched, not a
failed measurement retried on every phone.

Zoo names and arch strings are written once to `<results>/models/` (next to the store) by the
`.tflite` writer (deterministic weights, so the same arch and resolution always give the same
file and sha256) and reused from there (`bench.measure.write_arch_model`). A models folder that
cannot be created or written (read-only file system, no permission) is one MnasError naming
the folder and the cause.
"""

from __future__ import annotations

import os
from pathlib import Path

from mnas.bench.files import check_tflite_file, sha256_file
from mnas.bench.measure import PreparedModel, write_arch_model
from mnas.errors import MnasError
from mnas.space.arch import Arch

__all__ = ["PreparedModel", "looks_like_path", "prepare_model"]


def looks_like_path(spec: str) -> bool:
    """Whether MODEL names a file (see the module docstring for the rule)."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return spec.endswith(".tflite") or any(sep in spec for sep in separators) or Path(spec).exists()


def prepare_model(spec: str, models_dir: Path, resolution: int | None = None, multiplier: float = 1.0,
                  dtype: str = "float32") -> PreparedModel:
    """Resolve MODEL to a checked `.tflite` on disk (writing zoo/arch models on first use).

    `dtype="int8"` writes zoo/arch models fully quantized (`space.quantize`; label and file
    name end in `-int8`, so its sha256, hence its stored figures, are its own); a `.tflite`
    file is timed as it is, so asking for a dtype with one is bad input.
    """
    from mnas.space.quantize import check_dtype

    check_dtype(dtype)
    if looks_like_path(spec):
        if dtype != "float32":
            raise MnasError(f"{spec}: --dtype {dtype} applies to zoo names and arch strings: a .tflite file is timed as it is")
        from mnas.space.tflite_reader import check_model_file

        candidate = Path(spec)
        if not candidate.exists():
            raise MnasError(f"{spec}: no such model file")  # as typed: Path() would drop a leading ./
        check_tflite_file(candidate)  # missing file, folder, wrong identifier: the devices' own wording
        check_model_file(candidate)
        return PreparedModel(candidate, candidate.name, sha256_file(candidate))
    from mnas.space.resolve import default_resolution, resolve_arch
    from mnas.space.zoo import check_resolution

    arch = resolve_arch(spec, multiplier)
    res = resolution if resolution is not None else default_resolution(spec)
    check_resolution(res)
    label = spec if "_" not in spec else f"arch-{arch.hash}"
    if multiplier != 1.0:
        label = f"{label}-x{multiplier:g}"
    if dtype != "float32":
        label = f"{label}-{dtype}"
    path = models_dir / f"{label}-{res}-{arch.hash}.tflite"
    if not path.is_file():
        _writable_models_dir(models_dir)

    def writer(arch: Arch, path: Path, *, resolution: int) -> object:
        from mnas.space.tflite_writer import write_arch

        return write_arch(arch, path, resolution=resolution, dtype=dtype)

    return write_arch_model(arch, res, path, writer, label=label, reuse_file=True)


def _writable_models_dir(models_dir: Path) -> None:
    """Create `models_dir` if needed and make sure a file can be written there; one MnasError if not."""
    import tempfile

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=models_dir):
            pass
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__
        raise MnasError(f"{models_dir}: cannot write generated models there ({cause.lower()}); they are kept "
                        "next to the results store: choose a writable one with --db") from None
