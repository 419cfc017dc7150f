"""One choice's text as its tokens arrive, and the OpenAI log-probability layouts built from it.

Why by hand: the OpenAI formats are the contract here, and the subtle part is ours — stop strings
may span tokens, a byte-level token may end in the middle of a character, and a stream must hold
back text that could still turn out to be the start of a stop string.
"""

from __future__ import annotations

from functools import lru_cache

from tinyscale.serve.engine import Token

PARTIAL = "\ufffd"  # what the byte-level decoder shows for a character whose bytes are not all there yet


class TokenDecoder:
    """Token id <-> text for one tokenizer; special tokens are shown, not skipped."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.piece = lru_cache(maxsize=None)(self._piece)
        # A byte-level decoder (tinyscale's) decodes a concatenation as the concatenation of its parts
        # split at whole characters, so texts grow in pieces; any other decoder is decoded whole.
        self.splits = type(tokenizer.decoder).__name__ == "ByteLevel"

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _piece(self, token_id: int) -> str:
        return self.decode([token_id])

    def offsets(self, ids: list[int], base: int = 0) -> list[int]:
        """Character offset of each token in decode(ids), plus `base`: the length of the text before it,
        so a character split over tokens counts at the token that completes it. Linear in len(ids)."""
        text = Text(self)
        out = []
        for token_id in ids:
            out.append(base + len(text.value))
            text.add(token_id)
        return out


class Text:
    """decode(ids) of a growing list of ids, in time linear in their number: the part that ends on a
    whole character is kept decoded, and only the tokens after it are decoded again."""

    def __init__(self, vocab: TokenDecoder) -> None:
        self.vocab, self.ids, self.value = vocab, [], ""
        self.stable_chars, self._stable_ids = 0, 0  # value[:stable_chars] == decode(ids[:_stable_ids]), final

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)
        if not self.vocab.splits:
            self.value = self.vocab.decode(self.ids)
            return
        tail = self.vocab.decode(self.ids[self._stable_ids:])
        self.value = self.value[: self.stable_chars] + tail
        if not tail.endswith(PARTIAL):
            self.stable_chars, self._stable_ids = len(self.value), len(self.ids)


class Choice:
    """The generated part of one choice (the echoed prompt, if any, is kept apart in `echo`)."""

    def __init__(self, index: int, vocab: TokenDecoder, stops: list[str]) -> None:
        self.index, self.vocab, self.stops = index, vocab, stops
        self.echo: list[Token] = []
        self.tokens: list[Token] = []
        self.text = ""
        self._decoded = Text(vocab)
        self._longest_stop = max((len(s) for s in stops), default=0)
        self.finish: str | None = None
        self.sent_chars = 0  # text already streamed
        self.sent_tokens = 0  # tokens whose log-probabilities were already streamed

    @property
    def echo_text(self) -> str:
        return self.vocab.decode([t.id for t in self.echo])

    def add(self, token: Token) -> bool:
        """Append a token; True when a stop string completed (the text is cut before it)."""
        self.tokens.append(token)
        # Only a stop that ends past the text fixed before this token can be new: look back that far
        # and no further, so matching stays linear in the text (stops are at most MAX_STOP_CHARS long).
        since = max(0, self._decoded.stable_chars - self._longest_stop + 1)
        self._decoded.add(token.id)
        text = self._decoded.value
        hits = [i for i in (text.find(s, since) for s in self.stops) if i >= 0]
        if hits:
            self.text = text[: min(hits)]
            self._drop_tokens_past_text()
            self.finish = "stop"
            return True
        self.text = text
        return False

    def _drop_tokens_past_text(self) -> None:
        offsets = self.vocab.offsets([t.id for t in self.tokens])
        self.tokens = [t for t, o in zip(self.tokens, offsets, strict=True) if o < len(self.text)]

    def ready_text(self) -> str:
        """Text that can be streamed now: not a partial character, not a possible start of a stop string."""
        text = self.text
        if self.finish is None:
            text = text.rstrip(PARTIAL)
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - hold]
        return text[self.sent_chars:] if len(text) > self.sent_chars else ""


def legacy_logprobs(tokens: list[Token], offsets: list[int], vocab: TokenDecoder) -> dict:
    """The completions layout lm-evaluation-harness reads: parallel lists, one entry per token."""
    def top(t: Token) -> dict[str, float] | None:
        if t.logprob is None or t.top is None:
            return None
        # OpenAI lists the chosen token among the alternatives, whether or not it is in the top k.
        return {vocab.piece(i): lp for i, lp in t.top} | {vocab.piece(t.id): t.logprob}

    return {"tokens": [vocab.piece(t.id) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [top(t) for t in tokens], "text_offset": offsets}


def chat_logprobs(tokens: list[Token], vocab: TokenDecoder) -> dict:
    """The chat completions layout: one object per generated token with its top alternatives."""
    def entry(token_id: int, logprob: float) -> dict:
        piece = vocab.piece(token_id)
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

    return {"content": [entry(t.id, t.logprob) | {"top_logprobs": [entry(i, lp) for i, lp in t.top or []]}
                        for t in tokens if t.logprob is not None]}


def choice_logprobs(choice: Choice, start: int = 0) -> tuple[list[Token], list[int]]:
    """Tokens (echo then generated) from generated index `start` on, with their offsets in the choice's text."""
    echo_ids = [t.id for t in choice.echo]
    gen_ids = [t.id for t in choice.tokens]
    base = len(choice.echo_text)
    offsets = choice.vocab.offsets(gen_ids, base)
    if start == 0:
        return choice.echo + choice.tokens, choice.vocab.offsets(echo_ids) + offsets
    return choice.tokens[start:], offsets[start:]

