"""Peak extra memory of a product against a gradient's, on GPT-2 and BERT (tiny configs).

python benchmarks/hf_memory.py [--json OUT] [--reuse JSON]

Each number comes from a fresh process with ``MALLOC_MMAP_THRESHOLD_=131072`` (so freed
blocks leave the resident set): the peak resident set above the level just before the
call (``benchmarks.timing.PeakRss``; a CPU proxy, ``torch.cuda.max_memory_allocated`` on
CUDA). Per model and operator: the first product (it builds the graph cache), a later one
(cached), the memory held between them, each with the default cache and with
``graph_cache_mib=0``, whole batches and ``micro_batch_size`` = half and a quarter of the
batch; and a full-data gradient (whole batches, no cache) as the floor. Ratios: to the
gradient's first peak; "transient" = first - held (the part the graph cache does not keep).
Seconds: the first call (under the RSS sampler), and the median of a later call over
``ROUNDS`` interleaved rounds in one process (``product_seconds``).
Models (random, no download): GPT-2 (2 layers, width 128, 4 heads, vocabulary 2,000,
``CausalLMLoss``) and BERT (2 layers, width 128, 4 heads, MLP 512, vocabulary 2,000,
``MaskedLMLoss``, 15 % of the tokens labelled); 4 batches of 8 sequences of 64 tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import PeakRss, rss_mib  # noqa: E402

VOCAB, SEQ, BATCH, BATCHES = 2000, 64, 8, 4
MODELS = ("gpt2", "bert")
ROUNDS = 5  # timed rounds of later calls
MICRO = (None, BATCH // 2, BATCH // 4)  # micro_batch_size: whole batches, half, a quarter
KINDS = ("gradient",) + tuple(
    f"{op}{'' if m is None else f', m={m}'}{cache}"
    for op in ("hessian", "ggn")
    for m in MICRO
    for cache in ("", ", cache off")
)


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


def operator_call(name: str, kind: str):
    """(call, P): the gradient or a matvec of the operator that ``kind`` names."""
    import curvops

    model, loss_fn, data = problem(name)
    if kind == "gradient":
        op = curvops.HessianOperator(model, loss_fn, data, graph_cache_mib=0)
        return op.gradient, op.shape[0]
    cls = curvops.HessianOperator if kind.startswith("hessian") else curvops.GGNOperator
    op = cls(model, loss_fn, data, **options_of(kind))
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
    return (lambda: op.torch_matmat(v)), op.shape[0]


def measure(name: str, kind: str) -> dict:
    """Peak extra MiB of the first and a later call, and what is held between them."""
    call, P = operator_call(name, kind)
    gc.collect()
    before = rss_mib()
    start = time.perf_counter()
    with PeakRss() as first:
        call()
    first_s = time.perf_counter() - start
    gc.collect()
    held = rss_mib() - before
    with PeakRss() as later:
        call()
    return {"first": first.peak, "later": later.peak, "held": held, "P": P, "first_s": first_s}


def product_seconds(name: str) -> dict:
    """Median seconds of a later call per kind, over ROUNDS rounds that visit every kind
    in turn (one process, every operator built and warm: a shared machine's load hits
    every kind alike)."""
    calls = {kind: operator_call(name, kind)[0] for kind in KINDS}
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(ROUNDS):
        for kind, call in calls.items():
            start = time.perf_counter()
            call()
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def options_of(kind: str) -> dict:
    """The operator's options named by a kind such as "ggn, m=2, cache off"."""
    options: dict = {"graph_cache_mib": 0} if "cache off" in kind else {}
    for part in kind.split(", "):
        if part.startswith("m="):
            options["micro_batch_size"] = int(part[2:])
    return options


def fresh(*args: str) -> dict:
    """The JSON that this script prints with ``args``, run in a fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = [
        "| model | call | first MiB | held MiB | transient MiB | later MiB | first / grad "
        "| transient / grad | later / grad | first s | later s (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        grad = rows["gradient"]["first"]
        for kind, r in rows.items():
            transient = r["first"] - max(r["held"], 0.0)
            lines.append(
                f"| {name} (P = {r['P']:,}) | {kind} | {r['first']:.0f} | {r['held']:.0f} | "
                f"{transient:.0f} | {r['later']:.0f} | {r['first'] / grad:.2f} | "
                f"{transient / grad:.2f} | {r['later'] / grad:.2f} | "
                f"{r.get('first_s', float('nan')):.2f} | {r.get('median_s', float('nan')):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", type=Path, help="take the memory rows from this JSON; re-time")
    p.add_argument("--measure", nargs=2, metavar=("MODEL", "KIND"))
    p.add_argument("--time", metavar="MODEL")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.measure or args.time:
        print(json.dumps(measure(*args.measure) if args.measure else product_seconds(args.time)))
        return
    if args.reuse:
        results = json.loads(args.reuse.read_text())
    else:
        results = {
            name: {kind: fresh("--measure", name, kind) for kind in KINDS} for name in MODELS
        }
    for name in MODELS:
        for kind, median in fresh("--time", name).items():
            results[name][kind]["median_s"] = median
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
