"""One FAISS GPU resource object per process and GPU, checked on the CPU with a
stand-in for the faiss module that records what it was asked to build."""

from __future__ import annotations

from types import SimpleNamespace

from lvd import latents


class FakeFaiss:
    """The parts of faiss that ``latents.flat_index`` touches, recording each construction."""

    def __init__(self):
        self.resources, self.indexes, self.referenced = [], [], []

    def StandardGpuResources(self):
        res = SimpleNamespace(n=len(self.resources))
        self.resources.append(res)
        return res

    def GpuIndexFlatConfig(self):
        return SimpleNamespace(device=None)

    def GpuIndexFlatL2(self, res, d, cfg):
        index = SimpleNamespace(res=res, d=d, device=cfg.device)
        self.indexes.append(index)
        return index

    def IndexFlatL2(self, d):
        return SimpleNamespace(res=None, d=d, device="cpu")

    def add_to_referenced_objects(self, index, obj):
        self.referenced.append((index, obj))


def test_gpu_indexes_share_one_resource_object_per_gpu(monkeypatch):
    fake = FakeFaiss()
    monkeypatch.setattr(latents, "_GPU_RESOURCES", {})
    a = [latents.flat_index(8, "gpu:0", faiss=fake) for _ in range(5)]   # e.g. 5 positions
    b = latents.flat_index(4, "gpu:1", faiss=fake)
    assert len(fake.indexes) == 6
    assert len(fake.resources) == 2                                       # one per GPU, not per index
    assert all(i.res is a[0].res for i in a) and b.res is not a[0].res
    assert [i.device for i in a] == [0] * 5 and b.device == 1
    assert all(obj is index.res for index, obj in fake.referenced)        # each index keeps it alive
    assert latents.gpu_resources(0, fake) is a[0].res


def test_cpu_index_builds_no_gpu_resources(monkeypatch):
    fake = FakeFaiss()
    monkeypatch.setattr(latents, "_GPU_RESOURCES", {})
    index = latents.flat_index(8, "cpu", faiss=fake)
    assert index.device == "cpu" and not fake.resources
