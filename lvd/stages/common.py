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

One of several processes (a data-parallel EM stage launched by ``torchrun`` or ``srun``; see
lvd.stages.emstage and docs/scaleout.md): ``setup`` gives process r > 0 a quiet log (warnings and
errors only, each line marked ``[process r]``), leaves the stale temporaries to process 0, picks
``cuda:<local rank>`` where several GPUs are visible to every process (``--device cuda``, or a
SLURM job whose tasks share its GPUs; locally ``auto`` claims one free GPU per process), and
splits ``--threads`` between the processes torchrun started on this machine.
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

    rank, size = launch_rank()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log and not _tees(args.log):  # a tee of stderr copies the stream handler's lines
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log))
    marker = f" [process {rank}]" if size > 1 else ""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s %(name)s{marker} %(levelname)s %(message)s")
    # faiss's loader logs every SIMD build it does not find (PyPI's faiss-cpu has none beside the
    # generic one) as INFO with an exception's text, which reads like an error in a rule's log
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if rank == 0:
        remove_stale_temporaries(*output_paths(args))
    threads = args.threads
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)   # torchrun's processes on this machine
    if threads and local > 1:
        threads = max(1, threads // local)
    if threads:
        torch.set_num_threads(threads)
    if seed is not None:
        seed_everything(seed)
    device = devices.select(process_device(args.device))
    log.info("device %s, torch threads %d", device, torch.get_num_threads())
    return device


# ------------------------------------------------------------------- several processes
def launch_rank() -> tuple[int, int]:
    """(rank, number of processes) of this launch, from the environment torchrun (RANK,
    WORLD_SIZE) or srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS: a job step's tasks; a batch
    script's SLURM_NTASKS is no launch) set; (0, 1) for a single process. Read before any
    process group exists (logging, temporaries, the device, whether to join one)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    size = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    return (int(os.environ.get("SLURM_PROCID", "0")), size) if size > 1 else (0, 1)


def process_device(requested: str) -> str:
    """The device one process of several asks lvd.devices for: ``cuda:<local rank>`` for
    ``--device cuda``, and for ``auto`` in a SLURM job whose tasks all see its GPUs (no per-task
    binding); otherwise ``requested`` (locally ``auto`` claims a free GPU per process)."""
    if launch_rank()[1] <= 1:
        return requested
    import torch

    req = (requested or "auto").strip().lower()
    if not torch.cuda.is_available() or req not in ("auto", "cuda"):
        return requested
    n = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    if req == "cuda" or (os.environ.get("SLURM_JOB_ID") and n > 1):
        return f"cuda:{local % n}"
    return requested


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-04,07],cpu01" -> "gpu03"): ``scontrol
    show hostnames`` where it runs, else the list's first name and range."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"^([^\[,]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not m:
        raise RuntimeError(f"cannot read the first host of the SLURM node list {nodelist!r}")
    return m.group(1) + (m.group(2) or "")


def slurm_rendezvous() -> None:
    """For tasks started by ``srun`` (several in the step, no torchrun): MASTER_ADDR (the step's
    first node, where task 0 runs) and MASTER_PORT (from the job and step ids) unless already set;
    lvd.pc.distributed.init_from_env reads them."""
    if "WORLD_SIZE" in os.environ or launch_rank()[1] <= 1:
        return
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        os.environ["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in os.environ:
        job, step = int(os.environ.get("SLURM_JOB_ID", "0")), int(os.environ.get("SLURM_STEP_ID", "0") or 0)
        os.environ["MASTER_PORT"] = str(20000 + (job * 16 + step) % 40000)


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
