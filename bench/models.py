"""What `mnas bench` accepts as MODEL: a `.tflite` file, a zoo name or an arch string.

Zoo names and arch strings are written once to `<results>/models/` by the `.tflite` writer
(deterministic weights, so the same arch and resolution always give the same file and
sha256) and reused from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnas.bench.files import check_tflite_file, sha256_file


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    label: str
    sha256: str
    arch: str | None = None
    resolution: int | None = None


def prepare_model(spec: str, models_dir: Path, resolution: int | None = None, multiplier: float = 1.0) -> PreparedModel:
    """Resolve MODEL to a `.tflite` on disk (writing zoo/arch models on first use)."""
    candidate = Path(spec)
    if spec.endswith(".tflite") or candidate.exists():
        check_tflite_file(candidate)
        return PreparedModel(candidate, candidate.name, sha256_file(candidate))
    from mnas.space.resolve import default_resolution, resolve_arch
    from mnas.space.tflite_writer import write_arch
    from mnas.space.zoo import check_resolution

    arch = resolve_arch(spec, multiplier)
    res = resolution if resolution is not None else default_resolution(spec)
    check_resolution(res)
    label = spec if "_" not in spec else f"arch-{arch.hash}"
    if multiplier != 1.0:
        label = f"{label}-x{multiplier:g}"
    path = models_dir / f"{label}-{res}-{arch.hash}.tflite"
    if not path.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        write_arch(arch, path, resolution=res)
    return PreparedModel(path, label, sha256_file(path), str(arch), res)

