"""What `mnas bench` accepts as MODEL: a `.tflite` file, a zoo name or an arch string.

Zoo names and arch strings are written once to `<results>/models/` by the `.tflite` writer
(deterministic weights, so the same arch and resolution always give the same file and
sha256) and reused from there (`bench.measure.write_arch_model`).
"""

from __future__ import annotations

from pathlib import Path

from mnas.bench.files import check_tflite_file, sha256_file
from mnas.bench.measure import PreparedModel, write_arch_model

__all__ = ["PreparedModel", "prepare_model"]


def prepare_model(spec: str, models_dir: Path, resolution: int | None = None, multiplier: float = 1.0) -> PreparedModel:
    """Resolve MODEL to a `.tflite` on disk (writing zoo/arch models on first use)."""
    candidate = Path(spec)
    if spec.endswith(".tflite") or candidate.exists():
        check_tflite_file(candidate)
        return PreparedModel(candidate, candidate.name, sha256_file(candidate))
    from mnas.space.resolve import default_resolution, resolve_arch
    from mnas.space.zoo import check_resolution

    arch = resolve_arch(spec, multiplier)
    res = resolution if resolution is not None else default_resolution(spec)
    check_resolution(res)
    label = spec if "_" not in spec else f"arch-{arch.hash}"
    if multiplier != 1.0:
        label = f"{label}-x{multiplier:g}"
    return write_arch_model(arch, res, models_dir / f"{label}-{res}-{arch.hash}.tflite", label=label, reuse_file=True)
