"""A small corpus in WikiText-2's layout, written for the tests: the text DAG runs without the data.

``write_text_sample(directory)`` writes ``train.txt``, ``valid.txt`` and ``test.txt`` (the file
names lvd.data.text.split_file accepts) in WikiText-2's tokenized format: tokens separated by
single spaces, a space at the start of every line, ``= Heading =`` lines between paragraphs,
empty lines, ``@-@`` for an in-word hyphen, ``<unk>`` for rare words. Every split draws its
sentences from SENTENCES below (our own text, about 2.5 KB), shuffled by a seeded generator;
train holds every sentence, so valid and test have no word that train lacks.
"""

from __future__ import annotations

import random
from pathlib import Path

SENTENCES = """\
a probabilistic circuit is a directed acyclic graph of sum , product and input units .
every input unit holds a distribution over one variable , such as a pixel or a token .
a product unit multiplies distributions over disjoint sets of variables .
a sum unit mixes distributions over the same variables with weights that add up to one .
because the circuit is smooth and decomposable , a marginal costs one pass through the graph .
the expectation @-@ maximization algorithm raises the likelihood of the training data at every step .
large circuits are hard to train : the likelihood surface has many poor local optima .
latent variable distillation borrows the knowledge of a deep generative model .
the teacher encodes every patch of an image into an embedding .
k @-@ means turns the embeddings into discrete latent states , one for every patch .
with the latents observed , the parameters of the circuit follow from counts .
the counts give a starting point far better than a random one .
then the circuit is trained on the data alone until the likelihood stops rising .
a hidden markov model is a circuit over a sequence of tokens .
its hidden states play the role of the latents , one for every position .
the language model reads the tokens and gives an embedding for every position .
perplexity measures how surprised a model is by the test tokens .
a lower perplexity means a better model of the language .
the <unk> token stands for every word that is too rare to keep .
the baseline has the same structure but starts from random parameters .
the random control keeps the counts but shuffles the latents of every position .
when the teacher helps , the distilled circuit beats both controls .
the workflow runs every stage as one job and writes every artifact to disk .
a small run on a laptop takes a few minutes ; a large run needs a graphics card .
"""
HEADINGS = ["Circuits", "Training", "Distillation", "Sequences", "Results"]


def sentences() -> list[list[str]]:
    return [line.split() for line in SENTENCES.splitlines() if line.strip()]


def split_text(num_tokens: int, rng: random.Random, every_sentence: bool) -> str:
    """WikiText-style lines with at least ``num_tokens`` tokens (counting one ``<eos>`` per line)."""
    pool = sentences()
    order = list(range(len(pool))) if every_sentence else []
    lines, tokens = [""], 1
    while tokens < num_tokens:
        heading = rng.choice(HEADINGS)
        paragraph = []
        for _ in range(rng.randint(2, 5)):
            if not order:
                order = rng.sample(range(len(pool)), len(pool))
            paragraph += pool[order.pop(0)]
        lines += [f" = {heading} = ", "", " " + " ".join(paragraph) + " ", ""]
        tokens += 4 + len(paragraph) + 3  # every line adds an <eos>; the heading has 3 tokens
    return "\n".join(lines) + "\n"


def write_text_sample(directory: str | Path, num_tokens: int = 5000, seed: int = 0) -> Path:
    """Write train/valid/test.txt of at least ``num_tokens`` tokens each into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split in ("train", "valid", "test"):
        text = split_text(num_tokens, rng, every_sentence=split == "train")
        (directory / f"{split}.txt").write_text(text, encoding="utf-8")
    return directory
