"""Peak extra memory of a product against a gradient's, on GPT-2 and BERT (tiny configs).

python benchmarks/hf_memory.py [--json OUT]

Each number comes from a fresh process with ``MALLOC_MMAP_THRESHOLD_=131072`` (so freed
blocks leave the resident set): the peak resident set above the level just before the
call (``benchmarks.timing.PeakRss``; a CPU proxy, ``torch.cuda.max_memory_allocated`` on
CUDA). Per model and operator: the first product (it builds the graph cache), a later one
(cached), the memory held between them, each with the default cache and with
``graph_cache_mib=0``; and a full-data gradient (``loss.backward()`` per batch) as the floor.
Models (random, no download): GPT-2 (2 layers, width 128, 4 heads, vocabulary 2,000,
``CausalLMLoss``) and BERT (2 layers, width 128, 4 heads, MLP 512, vocabulary 2,000,
``MaskedLMLoss``, 15 % of the tokens labelled); 4 batches of 8 sequences of 64 tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import PeakRss, rss_mib  # noqa: E402

VOCAB, SEQ, BATCH, BATCHES = 2000, 64, 8, 4
MODELS = ("gpt2", "bert")
KINDS = ("gradient", "hessian", "hessian, cache off", "ggn", "ggn, cache off")


def problem(name: str):
    """(model, loss, batches) of a tiny random GPT-2 LM or BERT MLM."""
    import transformers

    import curvops

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=SEQ,
            bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
        )  # fmt: skip
        model, loss_fn = transformers.GPT2LMHeadModel(config), curvops.CausalLMLoss()
    else:
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=SEQ, type_vocab_size=1,
            attn_implementation="sdpa",
        )  # fmt: skip
        model, loss_fn = transformers.BertForMaskedLM(config), curvops.MaskedLMLoss()
    data = []
    for _ in range(BATCHES):
        ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=gen)
        X = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        labels = (
            ids
            if name == "gpt2"
            else torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, -100)
        )
        data.append((X, labels))
    return model.eval(), loss_fn, data


def measure(name: str, kind: str) -> dict:
    """Peak extra MiB of the first and a later call, and what is held between them."""
    import curvops

    model, loss_fn, data = problem(name)
    if kind == "gradient":
        op = curvops.HessianOperator(model, loss_fn, data, graph_cache_mib=0)

        def call():
            op.gradient()
    else:
        cls = curvops.HessianOperator if kind.startswith("hessian") else curvops.GGNOperator
        options = {"graph_cache_mib": 0} if "cache off" in kind else {}
        op = cls(model, loss_fn, data, **options)
        v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))

        def call():
            op.torch_matmat(v)

    gc.collect()
    before = rss_mib()
    with PeakRss() as first:
        call()
    gc.collect()
    held = rss_mib() - before
    with PeakRss() as later:
        call()
    return {"first": first.peak, "later": later.peak, "held": held, "P": op.shape[0]}


def fresh(name: str, kind: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, "--measure", name, kind]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = [
        "| model | P | call | first MiB | later MiB | held MiB | first / gradient | later / gradient |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        grad = rows["gradient"]["first"]
        for kind, r in rows.items():
            lines.append(
                f"| {name} | {r['P']:,} | {kind} | {r['first']:.0f} | {r['later']:.0f} | "
                f"{r['held']:.0f} | {r['first'] / grad:.2f} | {r['later'] / grad:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--measure", nargs=2, metavar=("MODEL", "KIND"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    results = {name: {kind: fresh(name, kind) for kind in KINDS} for name in MODELS}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
