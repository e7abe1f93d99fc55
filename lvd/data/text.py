"""WikiText-2 (or any corpus laid out like it): token streams, vocabulary, length-seq_len windows.

Tokens: every line of a split file gives ``line.split() + ["<eos>"]``; an empty line gives
just ``"<eos>"`` (PyTorch word_language_model's convention; it reproduces the published
counts 2,088,628 / 217,646 / 245,569).

Vocabulary: the types of the train stream, ids in order of first appearance in train (so
``<eos>`` is id 0 on WikiText-2, as in PyTorch's ``data.Dictionary``). Tokens of valid/test
that train lacks map to ``<unk>``; if train has no ``<unk>`` that is an error. With
``max_tokens`` > 0 every stream is cut to its first ``max_tokens`` tokens *before* the
vocabulary is built, and ``<eos>`` / ``<unk>`` are appended (in that order) if the cut train
lacks them.

Windows: row r of a split is ``stream[r * stride : r * stride + seq_len]``, for every r with
the window inside the stream: ``(len - seq_len) // stride + 1`` rows.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvd.data import SPLITS, DataError

log = logging.getLogger("lvd.data")

EOS, UNK = "<eos>", "<unk>"
WIKITEXT2_DIR = "data/wikitext-2"
WINDOW_CHUNK_ROWS = 4096  # rows per HDF5 chunk of a window dataset (4096 x 32 int32 = 512 KiB)


def split_file(directory: str | Path, split: str) -> Path:
    """The file holding ``split``: {split}.txt, {split}.txt.gz or wiki.{split}.tokens(.gz)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: directory not found (data.path for wikitext2; expected a directory "
                        f"holding train/valid/test files, e.g. train.txt.gz)")
    names = [f"{split}.txt", f"{split}.txt.gz", f"wiki.{split}.tokens", f"wiki.{split}.tokens.gz"]
    for name in names:
        if (d / name).is_file():
            return d / name
    raise DataError(f"{d}: split {split!r} missing; expected one of {names}")


def read_tokens(path: str | Path, max_tokens: int = 0) -> list[str]:
    """The token stream of one file; ``max_tokens`` > 0 stops reading after that many tokens."""
    path = Path(path)
    tokens: list[str] = []
    lines = 0
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rt", encoding="utf-8") as f:
            for line in f:
                lines += 1
                tokens.extend(line.split())
                tokens.append(EOS)
                if 0 < max_tokens <= len(tokens):
                    del tokens[max_tokens:]
                    break
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if lines == 0:
        raise DataError(f"{path}: empty file; expected tokenized text, one paragraph per line")
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Token types in order of first appearance."""
    return list(dict.fromkeys(tokens))


def encode(tokens: list[str], index: dict[str, int], where: str) -> tuple[np.ndarray, int]:
    """int32 ids of ``tokens`` (unknown -> ``<unk>``) and how many were unknown."""
    ids = np.fromiter((index.get(t, -1) for t in tokens), dtype=np.int32, count=len(tokens))
    unknown = ids < 0
    n_unknown = int(np.count_nonzero(unknown))
    if n_unknown:
        if UNK not in index:
            first = tokens[int(np.argmax(unknown))]
            raise DataError(f"{where}: {n_unknown} tokens are not in the train vocabulary (first: {first!r}) "
                            f"and the train vocabulary has no {UNK!r} to map them to")
        ids[unknown] = index[UNK]
    return ids, n_unknown


@dataclass
class Corpus:
    vocab: list[str]                 # id -> token
    streams: dict[str, np.ndarray]   # split -> int32 [num_tokens]
    files: dict[str, str]            # split -> file read
    unknown: dict[str, int]          # split -> tokens mapped to <unk> because train lacks them


def read_corpus(directory: str | Path, max_tokens: int = 0) -> Corpus:
    """Read train/valid/test of a WikiText-style directory into id streams and a vocabulary."""
    files = {s: split_file(directory, s) for s in SPLITS}
    tokens = {s: read_tokens(files[s], max_tokens) for s in SPLITS}
    vocab = build_vocab(tokens["train"])
    if max_tokens > 0:  # a cut train may lack the structural tokens; the cut valid/test need them
        vocab += [t for t in (EOS, UNK) if t not in vocab]
    index = {t: i for i, t in enumerate(vocab)}
    streams, unknown = {}, {}
    for s in SPLITS:
        streams[s], unknown[s] = encode(tokens[s], index, str(files[s]))
        tokens[s] = None  # free the strings of this split
        log.info("read %s: %d tokens, %d mapped to %s (not in train)", files[s], len(streams[s]),
                 unknown[s], UNK)
    log.info("vocabulary: %d types (from train%s)", len(vocab),
             f", first {max_tokens} tokens" if max_tokens > 0 else "")
    return Corpus(vocab, streams, {s: str(p) for s, p in files.items()}, unknown)


def count_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    """Number of windows ``stream[r*stride : r*stride+seq_len]`` inside a stream of num_tokens."""
    return 0 if num_tokens < seq_len else (num_tokens - seq_len) // stride + 1


def write_windows(f, name: str, stream: np.ndarray, seq_len: int, stride: int,
                  block_rows: int = 65536):
    """Write the windows of ``stream`` as int32 [N, seq_len] dataset ``name`` of h5py file/group ``f``.

    Written block by block from a strided view of the stream, so the windows are never all
    in memory (2M x 32 int32 would be 256 MiB).
    """
    n = count_windows(len(stream), seq_len, stride)
    if n == 0:
        raise DataError(f"{name}: {len(stream)} tokens, fewer than data.seq_len={seq_len}")
    d = f.create_dataset(name, shape=(n, seq_len), dtype=np.int32,
                         chunks=(min(n, WINDOW_CHUNK_ROWS), seq_len))
    view = np.lib.stride_tricks.sliding_window_view(stream, seq_len)[::stride]  # [n, seq_len], no copy
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        d[r0:r1] = view[r0:r1]
        if r1 < n and (r0 // block_rows) % 8 == 7:
            log.info("%s: %d / %d windows written", name, r1, n)
    return d
