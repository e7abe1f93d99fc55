"""What every stage's ``main`` shares: argument parsing, config loading, logging, seeding.

Conventions (all stages):
    --config JSON   the stage's settings as a JSON object (Snakemake passes ``params.cfg``);
                    unknown keys are an error naming the key. ``@path.json`` reads a file.
    --log PATH      also write the log there (Snakemake's ``log:``)
    --device D      auto (default) | cpu | cuda | cuda:N ; see lvd.devices
    --threads N     torch intra-op threads (Snakemake's ``threads:``)

Run from the command line (``python -m lvd.stages.<name>``, i.e. ``parse_args()`` without an
argument list), a stage also:
    * copies everything it writes to stderr into its --log file: log lines, a failure's message
      and traceback (logged by an excepthook as "<stage> failed: ..."), and the one-line
      message of a config error (``SystemExit``: the config section and the stage are named);
    * turns SIGTERM (SLURM's time limit, ``kill``) into an exception (``Terminated``, exit
      status 143), so ``finally`` blocks and context managers remove temporary files;
    * (in ``setup``) removes stale temporaries of its own outputs left by a killed run:
      ``.<name>.tmp-<pid>`` and ``.<name>.lls-<pid>.h5`` beside --out/--metrics/--plot and in
      --ckpt-dir/--figdir, when no process <pid> is alive on this host. Only this job's
      outputs are looked at: Snakemake lets no other job write them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io as stdio
import json
import logging
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lvd import configcheck, sections

log = logging.getLogger("lvd")
C = TypeVar("C")

OUTPUT_FILE_ARGS = ("out", "metrics", "plot")  # argument names of a stage's output files
OUTPUT_DIR_ARGS = ("ckpt_dir", "figdir")        # ... and of folders only this stage writes
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|lls)-(?P<pid>\d+)(?:\.h5)?$")


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM; exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose command-line ``parse_args()`` installs the stage's process
    hooks (see the module docstring). Called with an argument list (tests), it installs none."""

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        if args is None:
            install_process_hooks(getattr(ns, "log", None), stage_name())
        return ns

    def error(self, message):
        path = _log_from_argv(sys.argv[1:])
        if path:  # a usage error before --log could be opened: put it there too
            _append(path, f"{self.prog}: error: {message}\n")
        super().error(message)


def parser(description: str | None) -> argparse.ArgumentParser:
    p = StageParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="{}", help="stage settings as a JSON object, or @file.json")
    p.add_argument("--log", default=None, help="also append the log to this file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p


def add_shard_args(p: argparse.ArgumentParser) -> None:
    """The arguments of a sharded stage (latent_em, grow_patch_pcs): --shard, --num-shards, --out."""
    p.add_argument("--shard", type=int, required=True, help="this job's shard index in [0, num_shards)")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: config num_shards)")
    p.add_argument("--out", required=True, help="shard file to write (format lvd.pc_shard)")


def num_shards(args, cfg, section: str, log) -> int:
    """--num-shards, or the config's num_shards; a disagreement is logged (the argument wins)."""
    n = cfg.num_shards if args.num_shards is None else args.num_shards
    if n != cfg.num_shards:
        log.warning("--num-shards %d differs from %s.num_shards %d; using %d", n, section, cfg.num_shards, n)
    return n


def stage_name(module: str | None = None) -> str:
    """The stage's name (``assign_latents``) for a module name, ``__main__`` included."""
    if module is None or module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


def describe(cls: type) -> str:
    """"config section 'latents' (stage assign_latents)" for a stage's Config class."""
    return sections.describe(stage_name(cls.__module__))


def _int_fields(cls: type) -> set[str]:
    """Fields annotated ``int`` or ``int | None`` (annotations are strings here)."""
    return {f.name for f in dataclasses.fields(cls)
            if str(f.type).replace(" ", "") in ("int", "int|None", "Optional[int]", "None|int")}


def load_config(cls: type[C], text: str | dict | None, where: str = "--config") -> C:
    """Build the frozen dataclass ``cls`` from JSON text (or a dict), rejecting unknown keys.

    Every error is a one-line ``SystemExit`` naming ``where``, the config section and the stage:
    not JSON, unknown keys, a float such as 2.0 for an integer field, and the ValueError or
    TypeError of the dataclass's own checks.
    """
    if text is None:
        data: dict[str, Any] = {}
    elif isinstance(text, dict):
        data = dict(text)
    else:
        if text.startswith("@"):
            where = text[1:]
            text = Path(where).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{where}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SystemExit(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        moved = configcheck.moved_keys(sections.SECTIONS.get(stage_name(cls.__module__)), unknown)
        hint = "".join(f"; {old!r} is now {new!r}" for old, new in moved.items())
        raise SystemExit(f"{where}: unknown key(s) {unknown} in {describe(cls)}; known: {sorted(fields)}{hint}")
    for name in sorted(_int_fields(cls) & set(data)):
        if isinstance(data[name], float):
            raise SystemExit(f"{where}: key {name!r} of {describe(cls)} is {data[name]!r}, expected an "
                             f"integer (write {int(data[name]) if data[name].is_integer() else 'an integer'})")
    for name, value in data.items():
        if isinstance(value, list):  # JSON lists become tuples in frozen configs
            data[name] = tuple(value)
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{where}: {describe(cls)}: {e}") from e


def setup(args: argparse.Namespace, seed: int | None = None):
    """Configure logging, threads and seeds; return the torch device for this job."""
    import torch

    from lvd import devices

    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log and not _tees(args.log):  # a tee of stderr copies the stream handler's lines
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # faiss's loader logs every SIMD build it does not find (PyPI's faiss-cpu has none beside the
    # generic one) as INFO with an exception's text, which reads like an error in a rule's log
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    remove_stale_temporaries(*output_paths(args))
    if args.threads:
        torch.set_num_threads(args.threads)
    if seed is not None:
        seed_everything(seed)
    device = devices.select(args.device)
    log.info("device %s, torch threads %d", device, torch.get_num_threads())
    return device


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------- process hooks (CLI only)
class _Tee(stdio.TextIOBase):
    """stderr that also appends every write to a log file (flushed at once)."""

    def __init__(self, stream, path: str):
        self.stream, self.path = stream, str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8", errors="backslashreplace")

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


def _tees(path) -> bool:
    return isinstance(sys.stderr, _Tee) and sys.stderr.path == str(path)


def _append(path: str, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass


def _log_from_argv(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--log" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--log="):
            return a[len("--log="):]
    return None


def install_process_hooks(log_path: str | None, stage: str) -> None:
    """Tee stderr into ``log_path``, log uncaught exceptions with their traceback, and raise
    ``Terminated`` on SIGTERM. For a stage's own process (``python -m lvd.stages.<name>``)."""
    if log_path and not _tees(log_path):
        sys.stderr = _Tee(sys.stderr, log_path)

    def excepthook(etype, value, tb):
        if issubclass(etype, KeyboardInterrupt):
            sys.__excepthook__(etype, value, tb)
            return
        logging.getLogger(f"lvd.{stage}").error("%s failed: %s: %s", stage, etype.__name__, value,
                                                exc_info=(etype, value, tb))

    sys.excepthook = excepthook

    def on_signal(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once
        logging.getLogger(f"lvd.{stage}").error("%s: received %s; stopping (temporaries are removed)",
                                                stage, signal.Signals(signum).name)
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, on_signal)


# ------------------------------------------------------------------- stale temporaries
def output_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(output files, output folders) named by a stage's parsed arguments."""
    files = [Path(v) for k in OUTPUT_FILE_ARGS if isinstance(v := getattr(args, k, None), str)]
    dirs = [Path(v) for k in OUTPUT_DIR_ARGS if isinstance(v := getattr(args, k, None), str)]
    return files, dirs


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(files=(), dirs=()) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` / ``.<name>.lls-<pid>.h5`` of the output ``files`` (beside
    them) and any such temporary inside the output folders ``dirs``, when process <pid> is
    not alive; returns what was removed (each one logged)."""
    removed = []
    candidates: list[tuple[Path, str | None]] = [(Path(f).parent, Path(f).name) for f in files]
    candidates += [(Path(d), None) for d in dirs]
    for folder, name in candidates:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = TEMPORARY.match(entry.name)
            if not m or (name is not None and m.group("name") != name) or _alive(int(m.group("pid"))):
                continue
            try:
                size = entry.stat().st_size
                entry.unlink()
            except OSError as e:
                log.warning("could not remove stale temporary %s: %s", entry, e)
                continue
            removed.append(entry)
            log.info("removed stale temporary %s (%d bytes; process %s is gone)", entry, size, m.group("pid"))
    return removed
