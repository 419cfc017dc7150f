"""Speed and memory of `tinyscale interpret`'s streaming pass (stories/s) and of `--patch`
(pairs/s), with peak memory.

    .venv/bin/python bench/interpret_speed.py                     # 2,000 stories, the 3M preset
    .venv/bin/python bench/interpret_speed.py --stories 500 --run runs/3m   # a trained run instead
    .venv/bin/python bench/interpret_speed.py --patch 32          # patching: 32 pairs, 3M preset

Without --run it writes a story-world corpus of its own (under --work), trains a tokenizer, and
reads the stories with a random-initialised `3M` model (speed does not depend on the weights). It
times the neuron pass (top-k of the next-to-last layer, the random-init control, and the attention
statistics of the first 64 stories) and prints stories/s and the peak resident memory, which stays
flat as --stories grows (top-k is streamed).

--patch N instead times activation patching on N aligned minimal pairs (one model, no twin):
pairs/s, the forward passes it took, and the peak memory (resident, whole process; and the
largest Python-side allocation tracemalloc sees during the patching, which leaves out tensors). A random-init model is as fast as a
trained one (the same operations).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from tinyscale.interpret.one_model import Options, analyze_model, load_run_model, val_corpus


def _setup(work: Path, stories: int):
    from tinyscale.data.tokenize import load_tokenizer, tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.model import Transformer, model_config

    corpus = work / "corpus"
    if not (corpus / "val.jsonl").is_file():
        # val_fraction 0.5: the validation split alone holds the stories to read.
        write_world_corpus(corpus, stories=2 * stories, seed=0, val_fraction=0.5)
    if not (work / "shards" / "tokenizer.json").is_file():
        tokenize_corpus(corpus, work / "shards", vocab_size=4096)
    tok = load_tokenizer(work / "shards" / "tokenizer.json")
    model = Transformer(model_config("3M", vocab_size=4096, max_seq_len=512)).eval()
    return model, tok, corpus / "val.jsonl"


def _patch_bench(model, tok, pairs: int) -> None:
    import tracemalloc

    from tinyscale.interpret.patching import BATCH, components, make_aligned, patch_pairs

    eot = tok.token_to_id("<|endoftext|>")
    aligned, dropped = make_aligned(tok, eot, model.cfg.max_seq_len, pairs, seed=1)
    tokens = sum(len(a.clean) for a in aligned)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = patch_pairs(model, aligned, boot=1000)
    dt = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    names = components(model)
    print(f"model: {model.cfg.d_model} x {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, "
          f"{len(names)} components x 4 position classes (random init)")
    print(f"pairs: {len(aligned)} ({tokens:,} tokens, dropped {dropped}), queries {res['queries']}, time: {dt:.1f} s")
    batches = -(-len(aligned) // BATCH)
    print(f"pairs/s: {len(aligned) / dt:.2f}   forward passes: {batches * (len(names) + 2)} (batches of {BATCH} "
          f"pairs, {4 * BATCH} sequences when patched)   peak RSS: {peak_mb:,.0f} MB   "
          f"tracemalloc peak: {traced:,.1f} MB (Python objects only; torch's tensors are not traced)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stories", type=int, default=2000)
    ap.add_argument("--run", help="a trained run folder (default: a random-init 3M model)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tinyscale-interpret-bench"))
    ap.add_argument("--no-control", action="store_true", help="skip the random-init control model")
    ap.add_argument("--patch", type=int, default=0, metavar="PAIRS", help="time patching on this many pairs instead")
    args = ap.parse_args()
    if args.run:
        model, _, tok, _ = load_run_model(Path(args.run), None)
        path = val_corpus(args.run)
    else:
        model, tok, path = _setup(Path(args.work) / f"{args.stories}-stories", args.stories)
    if args.patch:
        _patch_bench(model, tok, args.patch)
        return
    eot = tok.token_to_id("<|endoftext|>")
    opts = Options(stories=args.stories, control=not args.no_control)
    t0 = time.perf_counter()
    data = analyze_model(model, path, tok, eot, opts)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: {model.cfg.d_model} x {model.cfg.n_layers} layers, {model.cfg.ffn_dim} neurons per layer, "
          f"layer {data['layers']}, control {'off' if args.no_control else 'on'}")
    print(f"stories: {data['stories']}, tokens: {data['tokens']:,}, time: {dt:.1f} s")
    print(f"stories/s: {data['stories'] / dt:.1f}   tokens/s: {data['tokens'] / dt:,.0f}   peak RSS: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
