"""metrics.json states what its numbers measure: evaluate copies the data protocol
(lvd.data.protocol: dataset, colour space, losslessness, crops and the protocol sentence) of
data.h5 into it, for files that record a protocol and for older files (whole RGB images)."""

from __future__ import annotations

import json

import h5py
import numpy as np

import pc_fixtures as fx
from lvd import data as lvd_data
from lvd.stages import evaluate, inputs, materialize_pc


def _circuit(tmp_path):
    data = fx.write_digits(tmp_path / "data.h5", n_train=120, n_valid=20, n_test=20)
    x = inputs.load_split(data, "train")
    lat = fx.write_latents(tmp_path / "latents.h5", fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, 3), 3)
    materialize_pc.run(materialize_pc.Config(num_latents=2), data, lat, tmp_path / "pc.h5")
    return data, tmp_path / "pc.h5"


def _evaluate(tmp_path, data, circuit, name):
    teacher = fx.write_teacher_metrics(tmp_path / "teacher.json", teacher_test_bpd=None)
    out = tmp_path / f"{name}.json"
    evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), str(data), {"lvd": [circuit]}, teacher, None,
                 out, tmp_path / f"fig_{name}")
    return json.loads(out.read_text())


def test_metrics_carry_the_data_protocol(tmp_path):
    data, circuit = _circuit(tmp_path)
    m = _evaluate(tmp_path, data, circuit, "old")      # a data.h5 without protocol attributes
    want = lvd_data.protocol(data)
    assert set(want) == set(lvd_data.PROTOCOL_KEYS)
    assert {k: m[k] for k in want} == json.loads(json.dumps(want))
    assert m["color"] == "rgb" and m["lossless"] is True and m["crop"] == 0 and "whole 8x8 images" in m["protocol"]
    assert m["kind"] == "image" and np.isfinite(m["test_bpd"])      # the protocol replaced no metric

    with h5py.File(data, "a") as f:                    # one that records its protocol
        f.attrs.update(color="ycocg_r", lossless=True, crop=4, crop_train="random", crop_eval="seeded",
                       crops_per_image=2, protocol="digits, 4x4 crops, lossless YCoCg-R")
    m = _evaluate(tmp_path, data, circuit, "new")
    assert (m["color"], m["crop"], m["crop_eval"], m["crops_per_image"]) == ("ycocg_r", 4, "seeded", 2)
    assert m["protocol"] == "digits, 4x4 crops, lossless YCoCg-R" and m["dataset"] == "digits"
