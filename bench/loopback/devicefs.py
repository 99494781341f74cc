"""The loopback phone's file system: a private folder that stands in for the phone's paths.

A loopback phone runs its shell commands with this host's /bin/sh, so the phone paths a
client uses must land somewhere real and private. Each device gets one root folder (the
phone's "/"), materialised at start:

    ROOT/data/local/tmp/                     pushes, models, benchmark_model
    ROOT/sdcard/
    ROOT/sys/devices/system/cpu/             possible, online, present, cpuN/online,
        cpufreq/policyF/{cpuinfo_max_freq, cpuinfo_min_freq, scaling_cur_freq,
        scaling_max_freq, scaling_min_freq, scaling_governor, related_cpus, affected_cpus}
        (one policy per cluster, F = its first core) and cpuN/cpufreq -> ../cpufreq/policyF
                                             (all from the device config)
    ROOT/sys/class/thermal/thermal_zoneN/{type,temp}           (millidegrees Celsius)
    ROOT/.loopback/bin/                      getprop, taskset and the benchmark_model shim
    ROOT/.loopback/props/                    one file per property + ALL (getprop's dump)

How paths are mapped:
- sync (push/pull/stat/list): every absolute phone path P is ROOT + P, so nothing outside
  the root can be read or written through sync.
- shell: the command text is rewritten before /bin/sh sees it: every occurrence of a mapped
  prefix (`/data/local/tmp`, `/sdcard`, `/sys/devices/system/cpu`, `/sys/class/thermal`)
  that starts a path (not preceded by a word character, '.', '/' or '-'; not followed by a
  word character) becomes ROOT + prefix. Only the prefix changes, in place, so quoting is
  untouched and `cat '/data/local/tmp/a b.txt'` still names one file; ROOT itself is
  required to hold no character the shell treats specially, so the inserted text is safe
  in any quoting context. Other paths (/proc, /bin) stay the host's: `/proc/self/status`
  shows the real affinity. Scripts that are pushed and then run are not rewritten.
- the shell starts in ROOT with PATH = ROOT/.loopback/bin, then the host's /usr/bin:/bin.
  `getprop` answers from the device config; `taskset MASK CMD...` accepts the phone's masks
  and pins CMD to ONE real host core (every valid mask maps to that core); a pushed file
  whose name ends in `benchmark_model` is run as the host runner (`python -m
  mnas.bench.bm_runner` with the same arguments) when it is the command of a simple
  command in the top-level text (`/data/local/tmp/x/benchmark_model --graph=...`,
  `cd d && ./benchmark_model ...`) or the command given to `taskset`. The shell commands
  run with this host user's rights: this is a test double, not a sandbox.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mnas.bench.device_config import DeviceConfig, default_config_dir, load_config
from mnas.errors import MnasError

MAPPED_PREFIXES = ("/data/local/tmp", "/sdcard", "/sys/devices/system/cpu", "/sys/class/thermal")
BM_SHIM = "mnas_lb_bm"
DEFAULT_BM_RUNNER = "mnas.bench.bm_runner"

# (type, normal temperature in C) of the thermal zones every loopback phone shows
THERMAL_ZONES = (("battery", 31.0), ("cpu-big", 36.5), ("cpu-little", 35.0), ("skin-therm", 33.0))
MIN_FREQ_KHZ = 300000
_SAFE_ROOT = re.compile(r"[A-Za-z0-9_./+-]+")
_PREFIX_RE = re.compile(
    r"(?<![\w./-])(" + "|".join(re.escape(p) for p in MAPPED_PREFIXES) + r")(?![\w.-])"
)
_PROP_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def resolve_config(name_or_path: str) -> DeviceConfig:
    """A device config from a YAML path or a name in the configs folder (e.g. `pixel4`)."""
    candidate = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or candidate.is_file():
        return load_config(candidate)
    path = default_config_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise MnasError(
            f"device config {name_or_path!r}: no file {path}; expected a YAML path or the name of "
            f"one of {default_config_dir()}/*.yaml"
        )
    return load_config(path)


def _core_list(cores: list[int]) -> str:
    """Kernel cpu-list text: `0-3,5`."""
    parts: list[str] = []
    start = prev = None
    for core in sorted(cores):
        if start is None:
            start = prev = core
        elif core == prev + 1:  # type: ignore[operator]
            prev = core
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = core
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@dataclass(frozen=True)
class ShellSettings:
    """What the shell wrappers need from the device (passed to them in the environment)."""

    host_core: int
    bm_runner: str = DEFAULT_BM_RUNNER


class DeviceFS:
    """One phone's private folder: layout, phone-path mapping and shell command rewriting."""

    def __init__(self, root: Path, config: DeviceConfig, settings: ShellSettings) -> None:
        root = root.resolve()
        if not _SAFE_ROOT.fullmatch(str(root)):
            raise MnasError(
                f"loopback root {str(root)!r}: expected a path made of letters, digits and _./+- only "
                "(it is pasted into shell commands)"
            )
        self.root = root
        self.config = config
        self.settings = settings
        self.ncores = max(config.cores) + 1
        self._thermal_state: tuple[float | None, float | None] | None = None

    # ------------------------------------------------------------------ layout
    @property
    def bin_dir(self) -> Path:
        return self.root / ".loopback" / "bin"

    @property
    def props_dir(self) -> Path:
        return self.root / ".loopback" / "props"

    def materialise(self) -> None:
        """Create (or refresh) the whole tree; pushed files already there are kept."""
        for sub in ("data/local/tmp", "sdcard", "sys/devices/system/cpu", "sys/class/thermal"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_props()
        self._write_cpu_tree()
        self.apply_conditions(overheat_c=None, throttle_ratio=None)
        self._write_wrappers()

    def _write_props(self) -> None:
        self.props_dir.mkdir(parents=True, exist_ok=True)
        props = dict(self.config.properties)
        props.setdefault("ro.serialno", f"loopback-{self.config.name}")
        for key in props:
            if not _PROP_KEY.fullmatch(key):
                raise MnasError(f"{self.config.source}: property {key!r}: expected [A-Za-z0-9_.-]+")
        for old in self.props_dir.iterdir():
            old.unlink()
        for key, value in props.items():
            (self.props_dir / key).write_text(f"{value}\n")
        (self.props_dir / "ALL").write_text("".join(f"[{k}]: [{props[k]}]\n" for k in sorted(props)))

    def _write_cpu_tree(self) -> None:
        """cpu/{possible,online,present}, cpu/cpufreq/policyF/* per cluster (F = its first
        core) and cpuN/cpufreq -> ../cpufreq/policyF, as a Linux kernel lays them out."""
        cpu = self.root / "sys/devices/system/cpu"
        all_cores = _core_list(list(self.config.cores))
        for name in ("possible", "online", "present"):
            (cpu / name).write_text(all_cores + "\n")
        for cluster in self.config.clusters:
            policy = cpu / "cpufreq" / f"policy{min(cluster.cores)}"
            policy.mkdir(parents=True, exist_ok=True)
            files = {
                "cpuinfo_max_freq": cluster.max_freq_khz,
                "cpuinfo_min_freq": MIN_FREQ_KHZ,
                "scaling_min_freq": MIN_FREQ_KHZ,
                "scaling_governor": "schedutil",
                "related_cpus": " ".join(str(c) for c in cluster.cores),
                "affected_cpus": " ".join(str(c) for c in cluster.cores),
            }
            for fname, value in files.items():
                (policy / fname).write_text(f"{value}\n")
            for core in cluster.cores:
                core_dir = cpu / f"cpu{core}"
                core_dir.mkdir(parents=True, exist_ok=True)
                (core_dir / "online").write_text("1\n")
                link = core_dir / "cpufreq"
                if not link.is_symlink():
                    link.symlink_to(Path("..") / "cpufreq" / policy.name)

    def apply_conditions(self, overheat_c: float | None, throttle_ratio: float | None) -> None:
        """Write thermal temps and frequencies for the given faults (None = healthy).

        Throttling lowers both `scaling_max_freq` (the cap thermal mitigation sets) and
        `scaling_cur_freq` to ratio x cpuinfo_max_freq, rounded down to a whole MHz.
        """
        state = (overheat_c, throttle_ratio)
        if state == self._thermal_state:
            return
        for zone, (kind, normal_c) in enumerate(THERMAL_ZONES):
            zone_dir = self.root / "sys/class/thermal" / f"thermal_zone{zone}"
            zone_dir.mkdir(parents=True, exist_ok=True)
            (zone_dir / "type").write_text(kind + "\n")
            temp_c = normal_c if overheat_c is None else overheat_c
            _write_atomic(zone_dir / "temp", f"{round(temp_c * 1000)}\n")
        ratio = 1.0 if throttle_ratio is None else throttle_ratio
        for cluster in self.config.clusters:
            freq = cluster.max_freq_khz
            if throttle_ratio is not None:
                freq = max(MIN_FREQ_KHZ, int(cluster.max_freq_khz * ratio) // 1000 * 1000)
            policy = self.root / "sys/devices/system/cpu/cpufreq" / f"policy{min(cluster.cores)}"
            _write_atomic(policy / "scaling_cur_freq", f"{freq}\n")
            _write_atomic(policy / "scaling_max_freq", f"{freq}\n")
        self._thermal_state = state

    def _write_wrappers(self) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        python = shlex.quote(sys.executable)
        props = shlex.quote(str(self.props_dir))
        scripts = {
            "getprop": (
                "#!/bin/sh\n"
                "# loopback phone: getprop [KEY [DEFAULT]] from the device config\n"
                f"props={props}\n"
                'if [ $# -eq 0 ]; then exec cat "$props/ALL"; fi\n'
                'case "$1" in */*|.*|ALL) echo "${2-}"; exit 0;; esac\n'
                'if [ -f "$props/$1" ]; then cat "$props/$1"; else echo "${2-}"; fi\n'
            ),
            "taskset": f'#!/bin/sh\nexec {python} -m mnas.bench.loopback.tools taskset "$@"\n',
            BM_SHIM: f'#!/bin/sh\nexec {python} -m mnas.bench.loopback.tools bm "$@"\n',
        }
        for name, text in scripts.items():
            path = self.bin_dir / name
            path.write_text(text)
            path.chmod(0o755)

    # ------------------------------------------------------------------ sync mapping
    def host_path(self, device_path: str) -> Path:
        """The host file behind an absolute phone path (never outside the root)."""
        if not device_path.startswith("/"):
            raise MnasError(f"phone path {device_path!r}: expected an absolute path")
        normal = posixpath.normpath(device_path).lstrip("/")
        return self.root / normal if normal and normal != "." else self.root

    # ------------------------------------------------------------------ shell
    def shell_env(self, *, truncate_output: bool) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "TMPDIR": str(self.root / "data/local/tmp"),
            "LANG": "C.UTF-8",
            "ANDROID_DATA": str(self.root / "data"),
            "MNAS_LB_ROOT": str(self.root),
            "MNAS_LB_NCORES": str(self.ncores),
            "MNAS_LB_HOST_CORE": str(self.settings.host_core),
            "MNAS_LB_BM_RUNNER": self.settings.bm_runner,
            "MNAS_LB_TRUNCATE": "1" if truncate_output else "0",
        }
        for passthrough in ("PYTHONPATH", "VIRTUAL_ENV"):
            if os.environ.get(passthrough):
                env[passthrough] = os.environ[passthrough]
        return env

    def rewrite_command(self, command: str) -> str:
        """Map phone paths to the private folder and route benchmark_model to the host runner."""
        mapped = _PREFIX_RE.sub(lambda m: str(self.root) + m.group(1), command)
        return route_benchmark_model(mapped)


_PATH_BYTES = frozenset(bytes([c]) for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+-")


class OutputMapper:
    """Turns host paths in a shell's output back into phone paths, across chunk boundaries.

    `ROOT/data/local/tmp/x` reads `/data/local/tmp/x` and a bare `ROOT` reads `/`, so `pwd`,
    `ls`, `sha256sum` and error messages show what a phone would. Bytes that could be the
    start of ROOT are held back until the next chunk (or `flush`) decides.
    """

    def __init__(self, root: Path) -> None:
        self._root = os.fsencode(str(root))
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data
        out = bytearray()
        pos = 0
        size = len(self._root)
        while True:
            hit = buffer.find(self._root, pos)
            if hit < 0 or hit + size >= len(buffer):
                break
            after = buffer[hit + size : hit + size + 1]
            if after in _PATH_BYTES:  # a longer name that merely starts like ROOT
                out += buffer[pos : hit + size]
            else:
                out += buffer[pos:hit] + (b"" if after == b"/" else b"/")
            pos = hit + size
        rest = buffer[pos:]
        hold = 0
        for length in range(min(len(rest), size), 0, -1):
            if self._root.startswith(rest[-length:]):
                hold = length
                break
        if hit >= 0 and hit + size >= len(buffer):  # ROOT right at the end: next byte decides
            hold = len(buffer) - hit
        out += rest[: len(rest) - hold]
        self._pending = rest[len(rest) - hold :]
        return bytes(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"/" if rest == self._root else rest


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- command scanner
_OPERATORS = ("&&", "||", ";;", ";", "&", "|", "(", ")", "\n")
_PREFIX_WORDS = frozenset({"!", "{", "}", "then", "do", "else", "elif", "if", "while", "until", "exec", "time", "nohup", "command"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT = re.compile(r"[0-9]*(<<-|<<|>>|<>|>&|<&|>\||<|>)")


@dataclass(frozen=True)
class _Token:
    start: int
    text: str  # the word with quotes removed (approximately: enough to read a command name)
    kind: str  # "word", "op", "redirect"


def _tokens(command: str) -> list[_Token]:
    """Split shell text into words, operators and redirections, with each token's offset."""
    tokens: list[_Token] = []
    i, n = 0, len(command)
    while i < n:
        ch = command[i]
        if ch in " \t":
            i += 1
            continue
        if ch == "#":  # comment to end of line
            while i < n and command[i] != "\n":
                i += 1
            continue
        op = next((o for o in _OPERATORS if command.startswith(o, i)), None)
        if op is not None:
            tokens.append(_Token(i, op, "op"))
            i += len(op)
            continue
        redirect = _REDIRECT.match(command, i)
        if redirect is not None:
            end = redirect.end()
            if redirect.group(1) in (">&", "<&"):
                while end < n and (command[end].isdigit() or command[end] == "-"):
                    end += 1
                tokens.append(_Token(i, command[i:end], "op-redirect-done"))
            else:
                tokens.append(_Token(i, command[i:end], "redirect"))
            i = end
            continue
        start, text = i, []
        while i < n and command[i] not in " \t\n;&|()<>":
            ch = command[i]
            if ch == "\\" and i + 1 < n:
                text.append(command[i + 1])
                i += 2
            elif ch == "'":
                close = command.find("'", i + 1)
                close = n if close < 0 else close
                text.append(command[i + 1 : close])
                i = close + 1
            elif ch == '"':
                j = i + 1
                while j < n and command[j] != '"':
                    if command[j] == "\\" and j + 1 < n:
                        text.append(command[j + 1])
                        j += 2
                        continue
                    text.append(command[j])
                    j += 1
                i = j + 1
            elif ch == "`":
                close = command.find("`", i + 1)
                close = n if close < 0 else close
                text.append(command[i : close + 1])
                i = close + 1
            elif command.startswith("$(", i):
                depth, j = 0, i + 1
                while j < n:
                    if command[j] == "(":
                        depth += 1
                    elif command[j] == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                text.append(command[i : j + 1])
                i = j + 1
            else:
                text.append(ch)
                i += 1
        tokens.append(_Token(start, "".join(text), "word"))
    return tokens


def command_words(command: str) -> list[tuple[int, str]]:
    """(offset, name) of the command word of every simple command in shell text."""
    found: list[tuple[int, str]] = []
    at_command = True
    skip_next = False
    for token in _tokens(command):
        if token.kind == "op":
            at_command = token.text != ")"
            continue
        if token.kind == "op-redirect-done":
            continue
        if token.kind == "redirect":
            skip_next = True
            continue
        if skip_next:
            skip_next = False
            continue
        if not at_command:
            continue
        if token.text in _PREFIX_WORDS or _ASSIGNMENT.match(token.text):
            continue
        found.append((token.start, token.text))
        at_command = False
    return found


def is_benchmark_model(name: str) -> bool:
    return posixpath.basename(name).endswith("benchmark_model")


def route_benchmark_model(command: str) -> str:
    """Prefix every command word naming a `*benchmark_model` file with the host-runner shim."""
    out = command
    for offset, name in reversed(command_words(command)):
        if is_benchmark_model(name) and name != BM_SHIM:
            out = out[:offset] + BM_SHIM + " " + out[offset:]
    return out


def conditions_from_faults(active: Mapping[str, float | int | None]) -> tuple[float | None, float | None]:
    """(overheat temperature, throttle ratio) the faults ask for; None when healthy."""
    overheat = active.get("overheat") if "overheat" in active else None
    throttle = active.get("throttle") if "throttle" in active else None
    return (
        None if overheat is None else float(overheat),
        None if throttle is None else float(throttle),
    )
