"""mnas: on-device latency benchmarking, latency prediction and MnasNet architecture search.

The packages `mnas.space`, `mnas.bench`, `mnas.predictor` and `mnas.search` live in the
repository's top-level folders of the same names; imports point one way
(space <- bench <- predictor <- search) and the CLI (`mnas.cli`) is a thin layer over them.
"""

__version__ = "0.1.0"
