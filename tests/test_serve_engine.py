"""The batching engine in-process: rows that join, move and leave a running batch compute what they would alone."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from tinyscale.generate import generate
from tinyscale.model import Transformer, model_config
from tinyscale.serve.engine import Engine, Job, QueueFull, Sampling


@pytest.fixture(scope="module", params=["llama", "neo"])
def model(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only wait for each other, more so on a busy machine
    torch.manual_seed(0)
    m = Transformer(model_config(vocab_size=97, max_seq_len=64, family=request.param, d_model=32, n_layers=2))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))  # peaked logits: no near-ties
    yield m.eval()
    torch.set_num_threads(threads)


def submit(engine: Engine, prompt: list[int], sampling: Sampling, n: int = 1) -> tuple[Job, queue.Queue]:
    events: queue.Queue = queue.Queue()
    job = Job(prompt, n, sampling, events.put)
    engine.submit(job)
    return job, events


def collect(events: queue.Queue, n: int = 1, timeout: float = 30) -> tuple[list[list[int]], list[str], list]:
    tokens, reasons, echo = [[] for _ in range(n)], [None] * n, []
    deadline = time.monotonic() + timeout
    while None in reasons:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if event[0] == "token":
            tokens[event[1]].append(event[2].id)
        elif event[0] == "done":
            reasons[event[1]] = event[2]
        elif event[0] == "prompt":
            echo = event[1]
    return tokens, reasons, echo


def test_staggered_requests_equal_each_prompt_decoded_alone(model):
    """Prompts of 2..40 tokens arrive while others run: the shared column moves both ways, finished rows
    leave (the last row moves into their place), and every greedy output equals `generate` on its own."""
    g = torch.Generator().manual_seed(1)
    lengths = [3, 20, 2, 40, 5, 11, 1, 30]
    prompts = [torch.randint(0, 97, (L,), generator=g).tolist() for L in lengths]
    budgets = [20, 9, 23, 15, 4, 12, 18, 6]
    engine = Engine(model, max_batch=4, max_queue=16)
    try:
        pending = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            pending.append(submit(engine, prompt, Sampling(max_tokens=budget, temperature=0))[1])
            time.sleep(0.003)  # let the batch move on between arrivals
        outs = [collect(ev)[0][0] for ev in pending]
    finally:
        engine.close()
    for prompt, budget, out in zip(prompts, budgets, outs, strict=True):
        assert out == generate(model, [prompt], budget, temperature=0)[0]
    assert engine.stats()["finished"] == len(prompts) and engine.stats()["running"] == 0


def test_requests_waiting_together_share_every_decoding_step(model):
    """16 prompts that arrive together decode in one batch: 19 forward passes for 20 tokens each
    (the first comes from the prompt), not 16 x 19, and each output is what it would be alone."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (int(L),), generator=g).tolist() for L in torch.randint(1, 13, (16,), generator=g)]
    engine = Engine(model, max_batch=16, max_queue=16)
    try:
        with engine._cond:  # the engine thread waits on this lock: it sees all 16 at once
            pending = [submit(engine, p, Sampling(max_tokens=20, temperature=0))[1] for p in prompts]
        outs = [collect(ev)[0][0] for ev in pending]
    finally:
        engine.close()
    assert engine.stats()["steps"] == 19
    assert outs == [generate(model, [p], 20, temperature=0)[0] for p in prompts]


def test_echo_only_stop_token_seeded_choices_and_queue_limit(model):
    engine = Engine(model, max_batch=2, max_queue=1)
    try:
        prompt = [5, 17, 33, 2]
        _, ev = submit(engine, prompt, Sampling(max_tokens=0, logprobs=3, echo=True))
        tokens, reasons, echo = collect(ev)
        assert tokens == [[]] and reasons == ["length"] and [t.id for t in echo] == prompt
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([prompt]))[0, :-1], -1)
        assert echo[0].logprob is None
        for t, row, tok in zip(echo[1:], want, prompt[1:], strict=True):
            assert abs(t.logprob - row[tok].item()) < 1e-5 and len(t.top) == 3

        first = generate(model, [prompt], 1, temperature=0)[0][0]
        tokens, reasons, _ = collect(submit(engine, prompt, Sampling(max_tokens=10, temperature=0, stop_id=first))[1])
        assert tokens == [[]] and reasons == ["stop"]  # the end-of-text token ends the choice unseen

        s = Sampling(max_tokens=12, temperature=1.0, seed=3)
        a = collect(submit(engine, prompt, s, n=2)[1], n=2)[0]
        b = collect(submit(engine, prompt, s, n=2)[1], n=2)[0]
        assert a == b and a[0] != a[1]  # each choice has its own seeded generator

        long = Sampling(max_tokens=50, temperature=0)
        with engine._cond:  # holding the engine's lock keeps it from admitting: the queue stays full
            waiting, _ = submit(engine, prompt, long)
            with pytest.raises(QueueFull):
                submit(engine, prompt, long)
        waiting.cancelled = True
    finally:
        engine.close()


def _drive(model, use_kernel: bool) -> tuple[list[list[int]], int, list[list[int]]]:
    """A fixed schedule, run by hand (the engine's thread closed): A runs alone, B joins it, B leaves
    and A runs alone again, A leaves; then a seeded sampled request C alone with D joining and leaving.
    Returns the tokens of A, B, C, D, how many steps went through the kernel, and the prompts."""
    engine = Engine(model, max_batch=4, max_queue=16)
    engine.close()
    if not use_kernel:
        engine.native = None
    calls = 0
    if engine.native is not None:
        step = engine.native.step

        def counted(*args, **kwargs):
            nonlocal calls
            calls += 1
            return step(*args, **kwargs)

        engine.native.step = counted
    g = torch.Generator().manual_seed(2)
    greedy, sampled = Sampling(max_tokens=30, temperature=0), Sampling(max_tokens=30, temperature=1.0, seed=7)
    events, prompts = [], []
    with torch.inference_mode():
        for sampling, (first, join_after, second_len) in ((greedy, (5, 6, 12)), (sampled, (9, 3, 2))):
            prompts.append(torch.randint(0, 97, (first,), generator=g).tolist())
            events.append(submit(engine, prompts[-1], sampling)[1])
            engine._admit()
            for _ in range(join_after):
                engine._step()
            short = Sampling(max_tokens=5, temperature=sampling.temperature, seed=sampling.seed)
            events.append(submit(engine, torch.randint(0, 97, (second_len,), generator=g).tolist(), short)[1])
            engine._admit()
            assert len(engine.rows) == 2 and not engine.lone
            while engine.rows:
                engine._step()
    return [collect(ev, timeout=1)[0][0] for ev in events], calls, prompts


def test_lone_request_decodes_in_the_kernel_as_the_forward_pass_does(model):
    """A request running alone is decoded by the single-sequence kernel, before another joins it and
    again after that one leaves (its cache rows then start past column 0); its tokens, greedy and sampled
    with a seed, equal those of the forward pass alone."""
    from tinyscale.decoding import NativeDecoder

    if not NativeDecoder.available(model, 1, torch.float32):
        pytest.skip("the C++ kernel is not built here")
    kernel, calls, prompts = _drive(model, use_kernel=True)
    forward, none, _ = _drive(model, use_kernel=False)
    assert kernel == forward and none == 0
    assert [len(t) for t in kernel] == [30, 5, 30, 5]
    # Lone steps: A's 6 before B joins and 30 - 1 - 6 - 4 after B's 4 shared steps; C's 3 and 30 - 1 - 3 - 4.
    assert calls == 6 + 19 + 3 + 22
    assert kernel[0] == generate(model, [prompts[0]], 30, temperature=0)[0]
    assert kernel[2] != generate(model, [prompts[1]], 30, temperature=0)[0]  # sampled, not greedy by accident


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_engine_cache_takes_memory_only_where_rows_are_written():
    """A server started with room for many requests does not hold that room until requests use it:
    the cache of 64 rows x 1024 positions (128 MB of float32 keys and values) adds a few MB at start,
    and a request still decodes what `generate` gives alone (unwritten columns read as zeros)."""
    torch.manual_seed(0)
    m = Transformer(model_config(vocab_size=97, max_seq_len=1024, d_model=128, n_layers=4, n_heads=4)).eval()
    full_mb = 2 * 4 * 64 * 1024 * 128 * 4 / 2**20
    before = _resident_mb()
    engine = Engine(m, max_batch=64, max_queue=4)
    try:
        # What the server's start-up line tells a user: 4 KB a token (keys and values of 4 layers x 128
        # floats), 128 MB at most.
        assert engine.cache_bytes() == (2 * 4 * 128 * 4, full_mb * 2**20)
        assert _resident_mb() - before < full_mb / 8
        prompts = [[1, 2, 3], [4, 5]]
        pending = [submit(engine, p, Sampling(max_tokens=6, temperature=0))[1] for p in prompts]
        got = [collect(events)[0][0] for events in pending]
    finally:
        engine.close()
    assert got == [generate(m, [p], 6, temperature=0)[0] for p in prompts]
