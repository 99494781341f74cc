"""Devices, the benchmark harness and the results store.

`bench` knows nothing of search spaces: it benchmarks any `.tflite` file on a device (this
host through the LiteRT interpreter, or a phone through adb and `benchmark_model`) and
stores every figure with the conditions it was taken under.
"""
