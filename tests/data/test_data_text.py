"""Text reader: tokens, vocabulary, <unk> mapping, windows, bad inputs, and the real WikiText-2."""

import gzip
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from lvd.data import DataError, data_info, load_split
from lvd.data.text import count_windows, read_corpus, read_tokens, split_file, write_windows
from lvd.stages.prepare_data import Config, run

# the real WikiText-2 (docs/data.md): $LVD_WIKITEXT2, else data/wikitext-2 in this checkout
WIKITEXT2 = Path(os.environ.get("LVD_WIKITEXT2", Path(__file__).resolve().parents[2] / "data" / "wikitext-2"))

TRAIN = " = Senjō = \n \n the cat sat <unk> \n the dog \n"
VALID = " the bird sat \n"            # "bird" is not in train -> <unk>
TEST = " \n dog cat \n the the \n"


def corpus(tmp_path, train=TRAIN, valid=VALID, test=TEST, style="txt"):
    d = tmp_path / "wt"
    d.mkdir(exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        if style == "txt":
            (d / f"{split}.txt").write_text(text, encoding="utf-8")
        elif style == "gz":
            (d / f"{split}.txt.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (d / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    return d


# hand-computed from TRAIN / VALID / TEST above
TRAIN_TOKENS = ["=", "Senjō", "=", "<eos>", "<eos>", "the", "cat", "sat", "<unk>", "<eos>", "the", "dog", "<eos>"]
VOCAB = ["=", "Senjō", "<eos>", "the", "cat", "sat", "<unk>", "dog"]
VALID_IDS = [3, 6, 5, 2]       # the <unk>(bird) sat <eos>
TEST_IDS = [2, 7, 4, 2, 3, 3, 2]


def test_tokens_eos_per_line(tmp_path):
    d = corpus(tmp_path)
    assert read_tokens(d / "train.txt") == TRAIN_TOKENS
    assert read_tokens(d / "train.txt", max_tokens=4) == TRAIN_TOKENS[:4]


@pytest.mark.parametrize("style", ["txt", "gz", "tokens"])
def test_corpus_vocab_and_unk(tmp_path, style):
    c = read_corpus(corpus(tmp_path, style=style))
    assert c.vocab == VOCAB  # order of first appearance in train
    np.testing.assert_array_equal(c.streams["train"], [VOCAB.index(t) for t in TRAIN_TOKENS])
    np.testing.assert_array_equal(c.streams["valid"], VALID_IDS)
    np.testing.assert_array_equal(c.streams["test"], TEST_IDS)
    assert c.unknown == {"train": 0, "valid": 1, "test": 0}
    assert all(s.dtype == np.int32 for s in c.streams.values())


def test_unknown_without_unk_is_an_error(tmp_path):
    d = corpus(tmp_path, train=" the cat \n")
    with pytest.raises(DataError, match=r"valid.txt: 2 tokens are not in the train vocabulary \(first: 'bird'\)"):
        read_corpus(d)
    # no <unk> needed when every valid/test token is known
    c = read_corpus(corpus(tmp_path, train=" a b \n", valid=" b a \n", test=" a \n"))
    assert c.vocab == ["a", "b", "<eos>"]


def test_max_tokens_cuts_before_vocab(tmp_path):
    c = read_corpus(corpus(tmp_path, train=" a b c \n d e \n"), max_tokens=3)
    assert c.vocab == ["a", "b", "c", "<eos>", "<unk>"]  # appended for the cut vocabulary
    np.testing.assert_array_equal(c.streams["train"], [0, 1, 2])
    np.testing.assert_array_equal(c.streams["valid"], [4, 4, 4])  # the bird sat: all unknown
    np.testing.assert_array_equal(c.streams["test"], [3, 4, 4])   # <eos> dog cat


@pytest.mark.parametrize("n, seq_len, stride, expected", [
    (10, 4, 1, 7), (10, 4, 3, 3), (10, 4, 6, 2), (4, 4, 1, 1), (3, 4, 1, 0), (10, 1, 1, 10)])
def test_count_windows(n, seq_len, stride, expected):
    assert count_windows(n, seq_len, stride) == expected
    brute = len([r for r in range(0, n, stride) if r + seq_len <= n])
    assert brute == expected


@pytest.mark.parametrize("stride", [1, 2, 5])
def test_write_windows_in_blocks(tmp_path, stride):
    stream = np.arange(23, dtype=np.int32) * 7
    with h5py.File(tmp_path / "w.h5", "w") as f:
        d = write_windows(f, "train", stream, seq_len=4, stride=stride, block_rows=3)
        got = d[()]
    expected = np.array([stream[r:r + 4] for r in range(0, 23 - 4 + 1, stride)])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32


def test_run_text_end_to_end(tmp_path):
    out = tmp_path / "data.h5"
    s = run(Config(dataset="wikitext2", path=str(corpus(tmp_path)), seq_len=3), out)
    assert s["sizes"] == {"train": 13 - 3 + 1, "valid": 2, "test": 5}
    info = data_info(out)
    assert (info["kind"], info["vocab_size"], info["num_cats"], info["seq_len"], info["stride"]) == \
        ("text", 8, 8, 3, 1)
    assert (info["eos_id"], info["unk_id"]) == (2, 6)
    assert list(load_split(out, "vocab")) == VOCAB  # utf-8 survives ("Senjō")
    np.testing.assert_array_equal(load_split(out, "valid_tokens"), VALID_IDS)
    np.testing.assert_array_equal(load_split(out, "valid"), [[3, 6, 5], [6, 5, 2]])
    test = load_split(out, "test")
    np.testing.assert_array_equal(test[-1], TEST_IDS[-3:])
    with h5py.File(out) as f:
        assert f["train"].chunks is not None and f["train"].dtype == np.int32


def test_run_text_stride(tmp_path):
    out = tmp_path / "data.h5"
    s = run(Config(dataset="wikitext2", path=str(corpus(tmp_path)), seq_len=2, stride=4), out)
    assert s["sizes"] == {"train": 3, "valid": 1, "test": 2}   # (13-2)//4+1, (4-2)//4+1, (7-2)//4+1
    np.testing.assert_array_equal(load_split(out, "test"), [TEST_IDS[0:2], TEST_IDS[4:6]])


def test_text_bad_inputs(tmp_path):
    d = corpus(tmp_path)
    (d / "test.txt").unlink()
    with pytest.raises(DataError, match=r"split 'test' missing; expected one of \['test.txt'") as e:
        run(Config(dataset="wikitext2", path=str(d)), tmp_path / "o.h5")
    assert str(d) in str(e.value)
    (d / "test.txt").write_text("")
    with pytest.raises(DataError, match=r"test.txt: empty file"):
        run(Config(dataset="wikitext2", path=str(d)), tmp_path / "o.h5")
    (d / "test.txt").write_bytes(b"\xff\xfe bad \n")
    with pytest.raises(DataError, match=r"test.txt: not UTF-8"):
        run(Config(dataset="wikitext2", path=str(d)), tmp_path / "o.h5")
    (d / "test.txt").write_text(" a \n")
    with pytest.raises(DataError, match=r"test.txt: 2 tokens, fewer than data.seq_len=3"):
        run(Config(dataset="wikitext2", path=str(d), seq_len=3), tmp_path / "o.h5")
    with pytest.raises(DataError, match=r"absent: directory not found \(data.path for wikitext2"):
        run(Config(dataset="wikitext2", path=str(tmp_path / "absent")), tmp_path / "o.h5")
    with pytest.raises(DataError, match=r"data.num_cats=5"):
        run(Config(dataset="wikitext2", path=str(d), num_cats=5), tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def have_wikitext2() -> bool:
    try:
        return all(split_file(WIKITEXT2, s).is_file() for s in ("train", "valid", "test"))
    except DataError:
        return False


@pytest.mark.skipif(not have_wikitext2(),
                    reason=f"needs the real WikiText-2: no train/valid/test files in {WIKITEXT2} "
                           "(set LVD_WIKITEXT2 to its directory; docs/data.md says where to get it)")
def test_real_wikitext2(tmp_path):
    c = read_corpus(WIKITEXT2)
    assert len(c.vocab) == 33278 and c.vocab[0] == "<eos>"
    assert {s: len(v) for s, v in c.streams.items()} == {"train": 2088628, "valid": 217646, "test": 245569}
    assert c.unknown == {"train": 0, "valid": 0, "test": 0}
    assert int(np.count_nonzero(c.streams["train"] == c.vocab.index("<unk>"))) == 54625  # README table
    assert int(np.count_nonzero(c.streams["valid"] == 0)) == 3760                       # one <eos> per line
    # the full stage with a large stride stays small: (2088628 - 32) // 4096 + 1 windows of train
    s = run(Config(dataset="wikitext2", path=str(WIKITEXT2), stride=4096), tmp_path / "d.h5")
    assert s["sizes"] == {"train": 510, "valid": 54, "test": 60}
    tokens = load_split(tmp_path / "d.h5", "test_tokens")
    np.testing.assert_array_equal(load_split(tmp_path / "d.h5", "test")[59], tokens[59 * 4096:59 * 4096 + 32])
