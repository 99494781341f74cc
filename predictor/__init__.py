"""Latency tables and predictors: measure every layer once, predict any network of the space.

How a prediction is made, and why each step is there (figures: this project's 2-core shared
x86 VM, LiteRT 2.3.0, 224x224, `benchmarks/predictor_accuracy.py`):

1. **Table** (`layers`, `build`, `table`): every distinct layer of the MnasNet space (2,500 at
   224) is written as a one-layer .tflite and timed on the device's pinned core, resumably.
   On the host: 14 min of measurement (0.34 s per layer, mostly the child process start),
   313 KiB as .json.gz. No kernel detection, no per-op profiling, no training data beyond
   the table itself — cheaper to build than nn-Meter / LitePred-style predictors.
2. **Statistic** (`bench.types.STATISTICS`): the median of the timed runs on phones; the minimum
   on the host, whose cores other processes share — a run longer than a scheduler slice is
   stretched by their turns (medians of whole networks rose 2x under load while layers
   stayed put), and the minimum is the run nobody interrupted.
3. **Contention guard** (`contention`): a host measurement whose benchmark process got less
   than 85% of its core is re-taken after a pause and flagged; flagged measurements are
   never reused nor fitted on, and every eval reports their share.
4. **Sum + calibration** (`lookup`, `calibration`): a network is the sum of its layers, then
   `a + b * sum + c * layers + d * Mweights`, fitted on K measured networks. Timed alone,
   a layer runs with its weights hot in cache; inside a network they were evicted by the
   other layers, a cost that grows with the weights streamed — adding the weight count cut
   the held-out error from 4.6% to 3.7% MAPE (91% -> 97% within ±10%).
5. **Repeats** (`endtoend`): one network's latency moves by ~3% (up to 10%) between
   processes (memory layout), while runs in one process agree; each calibration/eval
   network is measured in 3 processes and the median taken (94.7% -> 96.7% within ±10%).
6. **Held-out evaluation** (`evals`): calibration and eval networks come from disjoint random
   streams and eval drops calibration hashes. Result on 150 held-out networks with K = 40:
   MAPE 3.7%, RMSE 0.39 ms, 70% within ±5%, 96.7% within ±10%, Kendall tau 0.937.

Layers missing from a table come from a learned (gradient boosting) fallback (`learned`) and
are counted separately (`LookupPredictor.layer_coverage`, `fitting.prediction_rows`, `mnas
predict`). Whole networks of the space are summed through a precompiled index (`token_index`);
stored predictors are saved and loaded by `registry`. The predictors follow scikit-learn's
conventions (`additive`): parameters in `__init__`, fitted state ending in `_`, fitting
returns self, and predicting changes nothing.
"""
