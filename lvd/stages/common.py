"""What every stage's ``main`` shares: argument parsing, config loading, logging, seeding.

Conventions (all stages):
    --config JSON   the stage's settings as a JSON object (Snakemake passes ``params.cfg``);
                    unknown keys are an error naming the key. ``@path.json`` reads a file.
    --log PATH      also write the log there (Snakemake's ``log:``)
    --device D      auto (default) | cpu | cuda | cuda:N ; see lvd.devices
    --threads N     torch intra-op threads (Snakemake's ``threads:``)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger("lvd")
C = TypeVar("C")


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="{}", help="stage settings as a JSON object, or @file.json")
    p.add_argument("--log", default=None, help="also append the log to this file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p


def load_config(cls: type[C], text: str | dict | None, where: str = "--config") -> C:
    """Build the frozen dataclass ``cls`` from JSON text (or a dict), rejecting unknown keys."""
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
        raise SystemExit(f"{where}: unknown key(s) {unknown} for {cls.__module__}.{cls.__name__}; "
                         f"known: {sorted(fields)}")
    for name, value in data.items():
        if isinstance(value, list):  # JSON lists become tuples in frozen configs
            data[name] = tuple(value)
    return cls(**data)


def setup(args: argparse.Namespace, seed: int | None = None):
    """Configure logging, threads and seeds; return the torch device for this job."""
    import torch

    from lvd import devices

    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
