"""Phones on loopback: adbd stand-ins that the real adb server accepts.

A loopback phone is a local process that speaks adb's device-side protocol on 127.0.0.1, so
`adb connect 127.0.0.1:PORT` lists it and every adb client (the adb command line, adbutils,
mnas's AdbDevice) talks to it through the real adb server exactly as to a USB phone. It
serves what mnas uses on a phone (shell v1/v2, sync push/pull/stat/list, getprop from a
device config, the CPU and thermal sysfs files, taskset pinning to a real host core, and
`benchmark_model` runs that are real LiteRT timings) and can be told to fail in the ways
phones fail during long campaigns. This is how the adb path is tested end to end without a
phone, and how a laptop user tries `mnas bench --device ...` before plugging one in.

Modules: `protocol` (wire format), `server` (the device process, connections, streams),
`services` (shell, sync), `devicefs` (the private folder standing in for the phone's
paths), `tools` (taskset and the benchmark_model shim on the phone's PATH), `faults`
(fault switches and the live control file), `manager` (start/stop several phones and
connect them to the adb server; `mnas devices loopback ...`).
"""
