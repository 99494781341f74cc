"""What a run leaves behind and what it refuses: issue 11 points 6 and 7.

- a device config's `thermal.throttle_above_c` (the hot-after-the-run limit) is read and checked;
- a benchmark binary that is not an arm/aarch64 ELF file is refused before any push;
- host temp folders of a dead mnas process are removed by the next run, a live one's never;
- a host benchmark worker whose parent died exits (PR_SET_PDEATHSIG, and a pipe watch);
- model files a killed run left in a phone's model folder are removed by the next run.
"""

from __future__ import annotations

import pytest
import yaml

from mnas.bench.device_config import default_config_dir, parse_config
from mnas.errors import MnasError


def _pixel4(**thermal: object) -> dict:
    doc = yaml.safe_load((default_config_dir() / "pixel4.yaml").read_text())
    doc["thermal"].update(thermal)
    return doc


def test_throttle_above_c_defaults_reads_and_must_be_above_the_cooldown_threshold() -> None:
    assert parse_config(_pixel4(), "pixel4.yaml").thermal.throttle_above_c == 85.0
    assert parse_config(_pixel4(throttle_above_c=70), "pixel4.yaml").thermal.throttle_above_c == 70.0
    with pytest.raises(MnasError, match=r"field 'thermal.throttle_above_c' = 40: expected a temperature above "
                                        r"thermal.cooldown_below_c \(45\)"):
        parse_config(_pixel4(throttle_above_c=40), "pixel4.yaml")
