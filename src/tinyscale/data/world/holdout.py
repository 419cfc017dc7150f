"""Held-out compositions: stories that combine them go to `ood.jsonl` only.

A spec is a conjunction of atoms joined by `+`; a story is held out when it matches every atom:

    schema:NAME                 the plot schema (see `tinyscale.data.world.SCHEMAS`)
    feature:FEAT                a feature (dialogue, bad_ending, moral_value, plot_twist, foreshadowing,
                                conflict; "bad ending", "BadEnding", "twist", "moral" are accepted)
    fact:KEY                    a lexicon fact, in any phrasing
    fact:KEY@phrasing:K         that fact in its phrasing number K (0-based)
    instruct:KIND               a header kind in --format instruct (Features, Words, Summary, Sentence)
    none                        hold nothing out (not even the instruct default)

An atom without `kind:` repeats the previous kind, so `instruct:Words+Summary` means stories whose
header has both Words and Summary, and `feature:dialogue+conflict` both features. Examples:
`schema:pet_choice+feature:plot_twist`, `fact:tired_bed@phrasing:2`. With `--format instruct` and no
instruct spec, `instruct:Words+Summary` is held out, as TinyStories-Instruct held out one pairing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyscale.data.world.story import FEATURE_TITLE, FEATURES, HEADER_KINDS
from tinyscale.data.world.vocab import Vocab
from tinyscale.errors import UserError

DEFAULT_INSTRUCT = "instruct:Words+Summary"
KINDS = ("schema", "feature", "fact", "instruct")
_FEATURE_ALIASES = {"twist": "plot_twist", "moral": "moral_value", "badending": "bad_ending",
                    **{t.lower(): f for f, t in FEATURE_TITLE.items()}}


@dataclass(frozen=True)
class Atom:
    kind: str
    value: str
    phrasing: int | None = None

    def matches(self, meta: dict) -> bool:
        if self.kind == "schema":
            return meta["schema"] == self.value
        if self.kind == "feature":
            return self.value in meta["features"]
        if self.kind == "fact":
            return any(f["key"] == self.value and (self.phrasing is None or f["phrasing"] == self.phrasing)
                       for f in meta["facts"])
        return self.value in meta.get("instruct", ())


@dataclass(frozen=True)
class HoldOut:
    spec: str
    atoms: tuple[Atom, ...]

    def matches(self, meta: dict) -> bool:
        return all(a.matches(meta) for a in self.atoms)


def normalize_feature(name: str) -> str | None:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in FEATURES:
        return key
    return _FEATURE_ALIASES.get(key.replace("_", ""))


def parse_hold_outs(specs: list[str], vocab: Vocab, fmt: str, schemas: tuple[str, ...]) -> list[HoldOut]:
    """Parse --hold-out specs (adding the instruct default); raise UserError on anything unknown."""
    out = [parse_spec(s, vocab, schemas) for s in specs if s.strip().lower() != "none"]
    if any(s.strip().lower() == "none" for s in specs):
        if len(specs) > 1:
            raise UserError("--hold-out: 'none' cannot be combined with other specs")
        return []
    uses_instruct = any(a.kind == "instruct" for h in out for a in h.atoms)
    if uses_instruct and fmt != "instruct":
        raise UserError("--hold-out: instruct:... specs need --format instruct")
    if fmt == "instruct" and not uses_instruct:
        out.append(parse_spec(DEFAULT_INSTRUCT, vocab, schemas))
    return out


def parse_spec(spec: str, vocab: Vocab, schemas: tuple[str, ...]) -> HoldOut:
    atoms = []
    kind = None
    for part in spec.split("+"):
        part = part.strip()
        head, sep, rest = part.partition(":")
        if sep and head.lower() in KINDS:
            kind, value = head.lower(), rest.strip()
        elif kind is not None:
            value = part
        else:
            raise UserError(f"--hold-out {spec!r}: expected kind:value with kind one of {', '.join(KINDS)}")
        if not value:
            raise UserError(f"--hold-out {spec!r}: empty value after {kind}:")
        atoms.append(_atom(spec, kind, value, vocab, schemas))
    return HoldOut(spec, tuple(atoms))


def _atom(spec: str, kind: str, value: str, vocab: Vocab, schemas: tuple[str, ...]) -> Atom:
    where = f"--hold-out {spec!r}"
    if kind == "schema":
        if value not in schemas:
            raise UserError(f"{where}: unknown schema {value!r} (known: {', '.join(schemas)})")
        return Atom(kind, value)
    if kind == "feature":
        feat = normalize_feature(value)
        if feat is None:
            raise UserError(f"{where}: unknown feature {value!r} (known: {', '.join(FEATURES)})")
        return Atom(kind, feat)
    if kind == "instruct":
        known = {k.lower(): k for k in HEADER_KINDS}
        if value.lower() not in known:
            raise UserError(f"{where}: unknown header kind {value!r} (known: {', '.join(HEADER_KINDS)})")
        return Atom(kind, known[value.lower()])
    key, at, ph = value.partition("@")
    fact = vocab.fact_by_key.get(key)
    if fact is None:
        raise UserError(f"{where}: unknown fact {key!r}")
    if not at:
        return Atom(kind, key)
    p_kind, _, p_num = ph.partition(":")
    if p_kind != "phrasing" or not p_num.isdigit():
        raise UserError(f"{where}: expected fact:KEY@phrasing:K, got {value!r}")
    k = int(p_num)
    if k >= len(fact.phrasings):
        raise UserError(f"{where}: fact {key!r} has phrasings 0..{len(fact.phrasings) - 1}, not {k}")
    return Atom(kind, key, k)
