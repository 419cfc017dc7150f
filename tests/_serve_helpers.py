"""A tiny run folder and a real `tinyscale serve` process on a loopback port, for the server's tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ["Once upon a time there was a little dog named Tom.", "Lily liked to play in the park with her ball.",
        "The sun was warm and the birds sang.", "Mia was so tired that she went to bed.",
        "Ben had a red kite. He flew it high in the sky."] * 20


# An lm-eval multiple-choice task over a JSONL of story items ({items}: its path); the bench reuses it.
MC_TASK = """task: tiny_stories_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
# Stories begin after the end-of-text token; tinyscale's scorer starts every prompt with it too.
doc_to_text: "<|endoftext|>{{{{prompt}}}}"
doc_to_choice: "{{{{[answer] + wrong}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
"""

def make_run(root: Path, name: str = "tiny", *, d_model: int = 32, n_layers: int = 2, context: int = 128,
             seed: int = 0, vocab: int = 300) -> Path:
    """A run folder as the trainer writes it (run.json, tokenizer.json, one complete checkpoint), with
    random weights whose norms are perturbed so that no output hides behind init values."""
    from safetensors.torch import save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tinyscale.model import Transformer, model_config

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    tok.save(str(run / "tokenizer.json"))
    cfg = model_config(vocab_size=tok.get_vocab_size(), max_seq_len=context, d_model=d_model, n_layers=n_layers)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))  # peaked, varied logits
    (run / "run.json").write_text(json.dumps({"model": cfg.model_dump()}))
    save_model(model, str(run / "checkpoints" / "step_00000010.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000010.state.pt")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m tinyscale.cli serve ...` as a subprocess; output goes to files the tests can read."""

    def __init__(self, folders: list[Path], log_dir: Path, *args: str, key: str | None = None,
                 timeout: float = 180) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        cmd = [sys.executable, "-m", "tinyscale.cli", "serve", *map(str, folders), "--port", str(self.port),
               "--device", "cpu", "--threads", "1", *args]  # tiny models: one thread is fastest, and fair to a busy machine
        if key is not None:
            env["TEST_SERVE_KEY"] = key
            cmd += ["--api-key-env", "TEST_SERVE_KEY"]
        self.stdout, self.stderr = log_dir / "serve.out", log_dir / "serve.err"
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.stdout, "wb"), stderr=open(self.stderr, "wb"))
        self._wait_ready(timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr.read_text()[-2000:]}")
            try:
                if requests.get(self.base + "/health", headers=self.headers, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s: {self.stderr.read_text()[-2000:]}")

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
