"""Turn what a user types (a zoo name or an arch string) into an `Arch`."""

from __future__ import annotations

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch


def resolve_arch(text: str, multiplier: float = 1.0) -> Arch:
    """A zoo name (`mnasnet-a1`) at a depth multiplier, or an arch/block string."""
    text = text.strip()
    if text in zoo.names():
        return zoo.get(text, multiplier)
    if "_" not in text:
        raise MnasError(f"unknown zoo model {text!r}: expected one of {', '.join(zoo.names())} or an arch string")
    if multiplier != 1.0:
        raise MnasError(f"--multiplier {multiplier:g}: expected 1.0 with an arch string (scale zoo models only)")
    return Arch.parse(text)


def default_resolution(text: str) -> int:
    """The resolution a zoo model was designed for (224 for arch strings)."""
    return zoo.entry(text).default_resolution if text.strip() in zoo.names() else 224
