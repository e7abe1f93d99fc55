"""Teachers: deep models whose per-position embeddings become the PC's latent variables.

Kinds (the ``kind`` of the train_teacher config; ``auto`` = the default for the data kind):

    vqvae  image  VQ-VAE with a per-patch discretized-logistic decoder (LVD-PG; default)
    mae    image  masked autoencoder, embeddings from 3x3 patch neighbourhoods (LVD)
    lm     text   causal transformer LM, embedding = state that emits x_t (default)
    mlm    text   bidirectional masked LM over the window

Every teacher is an ``nn.Module`` with attributes ``num_positions`` and ``embedding_dim`` and
    loss(x) -> (scalar loss, dict of floats)          one training batch
    embed(x) -> float [B, num_positions, embedding_dim]
    prepare(train)  (optional) data-dependent set-up before the first epoch (train: all of it)
    evaluate(batches, fit_batches=None) -> dict       metrics over an iterable of batches
where x is a batch straight from data.h5 as a tensor (images [B, H, W, Ch], text [B, seq_len]).

``teacher.pt`` (written by train_teacher) holds {"kind", "config", "data_info", "state_dict",
"epoch", "num_positions", "embedding_dim"}; ``load`` rebuilds the model from it alone.
"""

from __future__ import annotations

from pathlib import Path

import h5py
from torch import nn

from lvd import io

DATA_KIND = {"vqvae": "image", "mae": "image", "lm": "text", "mlm": "text"}
DEFAULT_KIND = {"image": "vqvae", "text": "lm"}
IMAGE_ATTRS = ("height", "width", "channels", "num_cats", "patch_size")
TEXT_ATTRS = ("vocab_size", "seq_len")


def resolve_kind(kind: str, data_kind: str, where: str = "teacher config") -> str:
    """``auto`` -> the default for the data; otherwise check that ``kind`` fits the data."""
    if kind == "auto":
        return DEFAULT_KIND[data_kind]
    if kind not in DATA_KIND:
        raise ValueError(f"{where}: field 'kind' is {kind!r}, expected one of {['auto', *DATA_KIND]}")
    if DATA_KIND[kind] != data_kind:
        raise ValueError(f"{where}: teacher kind {kind!r} is for {DATA_KIND[kind]} data, but the data kind is "
                         f"{data_kind!r} (use one of {[k for k, d in DATA_KIND.items() if d == data_kind]})")
    return kind


def read_data_info(f: h5py.File) -> dict:
    """The data attributes a teacher is built from, checked against the train split."""
    kind = f.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind not in DEFAULT_KIND:
        raise io.ArtifactError(f"{f.filename}: attribute 'kind' is {kind!r}, expected 'image' or 'text'")
    names = IMAGE_ATTRS if kind == "image" else TEXT_ATTRS
    missing = [a for a in names if a not in f.attrs]
    if missing:
        raise io.ArtifactError(f"{f.filename}: missing attribute(s) {missing} for {kind} data")
    info = {"kind": kind, **{a: int(f.attrs[a]) for a in names}}
    if kind == "image":
        train = io.require(f, "train", ndim=4, dtype_kind="u")
        expect = (info["height"], info["width"], info["channels"])
        if train.shape[1:] != expect:
            raise io.ArtifactError(f"{f.filename}: field 'train' has shape {train.shape}, expected [N, "
                                   f"{', '.join(map(str, expect))}] from the attributes height/width/channels")
    else:
        train = io.require(f, "train", ndim=2, dtype_kind="iu")
        if train.shape[1] != info["seq_len"]:
            raise io.ArtifactError(f"{f.filename}: field 'train' has shape {train.shape}, expected "
                                   f"[N, {info['seq_len']}] from attribute seq_len")
    return info


def build(kind: str, info: dict, hp: dict) -> nn.Module:
    """A fresh teacher of ``kind`` for data described by ``info`` (see read_data_info) with
    hyperparameters ``hp`` (the train_teacher config as a dict)."""
    if DATA_KIND.get(kind) != info["kind"]:
        raise ValueError(f"teacher kind {kind!r} cannot model {info['kind']} data")
    if kind in ("vqvae", "mae"):
        image = {a: info[a] for a in IMAGE_ATTRS}
        if kind == "vqvae":
            from lvd.teachers.vqvae import VQVAE
            return VQVAE(**image, dim=hp["dim"], latent_dim=hp["latent_dim"], codebook_size=hp["codebook_size"],
                         num_codebooks=hp["num_codebooks"], num_mix=hp["num_mix"], commitment=hp["commitment"],
                         ema_decay=hp["ema_decay"], res_blocks=hp["layers"])
        from lvd.teachers.mae import MAE
        return MAE(**image, dim=hp["dim"], layers=hp["layers"], heads=hp["heads"], num_mix=hp["num_mix"],
                   mask_ratio=hp["mask_ratio"] if hp.get("mask_ratio") is not None else 0.75)
    from lvd.teachers.lm import TokenLM, auto_cutoffs
    return TokenLM(info["vocab_size"], info["seq_len"], dim=hp["dim"], layers=hp["layers"], heads=hp["heads"],
                   causal=kind == "lm", cutoffs=auto_cutoffs(info["vocab_size"]),
                   mask_ratio=hp["mask_ratio"] if hp.get("mask_ratio") is not None else 0.15)


def load(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained teacher from ``teacher.pt`` (on the CPU); returns (model, file dict)."""
    ckpt = io.load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise io.ArtifactError(f"{path}: expected a dict, found {type(ckpt).__name__}")
    missing = [k for k in ("kind", "config", "data_info", "state_dict") if k not in ckpt]
    if missing:
        raise io.ArtifactError(f"{path}: missing field(s) {missing}; not a teacher file written by train_teacher")
    if ckpt["kind"] not in DATA_KIND:
        raise io.ArtifactError(f"{path}: field 'kind' is {ckpt['kind']!r}, expected one of {list(DATA_KIND)}")
    model = build(ckpt["kind"], ckpt["data_info"], ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise io.ArtifactError(f"{path}: field 'state_dict' does not fit a {ckpt['kind']} teacher "
                               f"with the stored config: {e}") from e
    return model, ckpt
