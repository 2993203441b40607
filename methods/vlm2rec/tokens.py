"""Token ids of VLM2Rec's prompts, tokenised once and reused (the embedder's input fast path).

Tokenising every prompt of every batch cost more than the model itself did on the tiny
stand-ins. Here each piece is tokenised once:

- an item's text prompt: tokenised whole, once per (cleaned) text;
- the image prompts (one item image; a user's ``n`` images): once per ``n``;
- a user's text prompt (the history's texts, one line each) is assembled from cached pieces: the
  head (chat turn + "...oldest first:\\n1."), one *line piece* per text (" {text}\\n"), the joiners
  between lines ("2.", "3.", ...) and the tail (instruction + end of turn).

Assembling is exact only if the tokenizer splits at the piece boundaries. It does for the
byte-level BPE tokenizers in use (GPT-2's and Qwen2's pre-tokenizer regexes attach the space to
the following word and end a pre-token at a newline) except in corner cases (Qwen2 joins
punctuation with the newline after it). So every text is checked once, in context: the
two-line prompt ``[t, t]`` assembled from pieces must equal the tokenizer's ids of the whole
prompt; each joiner is checked once the same way. A text (or a history length) that fails
falls back to tokenising its whole prompt, so the ids are always the tokenizer's own.

The cache follows the templates in :mod:`prompts`: if one changes (a test does this), every
cached piece is dropped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from . import prompts

_MAX_TEXTS = 200_000  # cached texts (cleaned text, item prompt ids, line piece ids)
_MAX_BODIES = 20_000  # cached whole-prompt tokenisations (joint prompts, fallbacks)


def _mark(i: int) -> str:
    return chr(0xE000 + i)  # private-use characters: never in a cleaned text or a template


class PromptTokens:
    """Prompt -> token ids (one image token per image, not yet expanded) for one tokenizer and
    prompt family ("qwen" or "idefics3"). ``clean`` maps raw item texts to prompt texts."""

    def __init__(self, tokenizer: Any, family: str, max_text_tokens: int, special: re.Pattern):
        self.tok, self.family = tokenizer, family
        self.max_text_tokens = int(max_text_tokens)
        self._special = special
        self._signature: tuple = ()
        self._reset()

    # -- caches ---------------------------------------------------------------------------
    def _templates(self) -> tuple:
        p = prompts
        return (p.CHAT[self.family], p.IMAGE_SLOT[self.family], p.ITEM_TEXT, p.ITEM_IMAGE,
                p.USER_TEXT, p.USER_TEXT_LINE, p.USER_IMAGE, p.USER_IMAGE_LINE)

    def _reset(self) -> None:
        self._clean: OrderedDict[str, str | None] = OrderedDict()  # raw text -> prompt text
        self._item: dict[str, list[int]] = {}  # prompt text -> item text prompt ids
        self._line: dict[str, list[int] | None] = {}  # prompt text -> line piece (None: unsafe)
        self._bodies: OrderedDict[str, list[int]] = OrderedDict()
        self._images: dict[int, list[int]] = {}  # n images -> prompt ids (0: the item prompt)
        self._layout: dict | None = None
        self._joiners: dict[int, list[int] | None] = {}

    def sync(self) -> None:
        """Drop every cached piece if a template in :mod:`prompts` changed since the last call."""
        sig = self._templates()
        if sig != self._signature:
            self._signature = sig
            self._reset()

    def _ids(self, strings: list[str], specials: bool = True) -> list[list[int]]:
        if not strings:
            return []
        return self.tok(strings, add_special_tokens=specials)["input_ids"]

    # -- texts ----------------------------------------------------------------------------
    def texts(self, raw: list[str | None]) -> list[str | None]:
        """Prompt texts: whitespace collapsed, special tokens removed, at most
        ``max_text_tokens`` tokens; None where the text is missing or blank. New texts get their
        item prompt and line piece tokenised here, in one batch."""
        cache = self._clean
        todo = sorted({t for t in raw if t and t not in cache})
        if todo:
            cleaned = [" ".join(self._special.sub(" ", t).split()) for t in todo]
            for key, text, tid in zip(todo, cleaned, self._ids(cleaned, specials=False)):
                if len(tid) > self.max_text_tokens:
                    text = self.tok.decode(tid[: self.max_text_tokens]).strip()
                cache[key] = text or None
            self._learn([cache[k] for k in todo if cache[k] and cache[k] not in self._item])
            while len(cache) > _MAX_TEXTS:
                cache.popitem(last=False)
            if len(self._item) > _MAX_TEXTS:  # rare: start the id caches afresh
                self._item.clear()
                self._line.clear()
        return [cache[t] if t else None for t in raw]

    def _learn(self, texts: list[str]) -> None:
        """Tokenise each new text's item prompt, and check its line piece in context."""
        texts = list(dict.fromkeys(texts))
        if not texts:
            return
        lay = self._user_layout()
        whole = [prompts.wrap(self.family, prompts.item_text(t)) for t in texts]
        probes = [prompts.wrap(self.family, prompts.user_text([t, t])) for t in texts]
        ids = self._ids(whole + probes)
        n = len(texts)
        pieces = self._ids([lay["lead"] + t + lay["trail"] for t in texts], specials=False)
        for t, item, probe, piece in zip(texts, ids[:n], ids[n:], pieces):
            self._item[t] = item
            self._line[t] = piece if lay["ok"] and probe == self._assemble(
                [piece, piece], [self._joiner2()]) else None

    # -- prompts --------------------------------------------------------------------------
    def item_text(self, text: str) -> list[int]:
        """Ids of the item text prompt of a prompt text (from :meth:`texts`)."""
        ids = self._item.get(text)
        if ids is None:  # a text that did not come through texts()
            self._learn([text])
            ids = self._item[text]
        return ids

    def images(self, n: int) -> list[int]:
        """Ids of the image prompt holding ``n`` images: 0 means the item image prompt, n >= 1
        a user's prompt (its images in order)."""
        ids = self._images.get(n)
        if ids is None:
            slot = prompts.IMAGE_SLOT[self.family]
            body = prompts.item_image(slot) if n == 0 else prompts.user_image(n, slot)
            ids = self._images[n] = self._ids([prompts.wrap(self.family, body)])[0]
        return ids

    def user_text(self, texts: list[str]) -> list[int]:
        """Ids of a user's text prompt listing ``texts`` (prompt texts, oldest first), from
        cached pieces where they were checked; the whole prompt tokenised otherwise."""
        missing = [t for t in texts if t not in self._line]
        if missing:  # texts that did not come through texts()
            self._learn(missing)
        pieces = [self._line[t] for t in texts]
        joiners = [self._joiner(k) for k in range(2, len(texts) + 1)]
        if any(p is None for p in pieces) or any(j is None for j in joiners):
            return self.body(prompts.user_text(texts))
        return self._assemble(pieces, joiners)

    def body(self, body: str) -> list[int]:
        """Ids of any prompt body, tokenised whole (internal-fusion prompts, fallbacks)."""
        cache = self._bodies
        ids = cache.get(body)
        if ids is None:
            ids = cache[body] = self._ids([prompts.wrap(self.family, body)])[0]
            while len(cache) > _MAX_BODIES:
                cache.popitem(last=False)
        return ids

    # -- the user text prompt's pieces -------------------------------------------------------
    def _split(self, k: int) -> list[str]:
        """The wrapped text prompt of ``k`` placeholder texts, cut at them (k + 1 strings)."""
        marks = [_mark(i) for i in range(k)]
        return re.split("|".join(marks), prompts.wrap(self.family, prompts.user_text(marks)))

    def _user_layout(self) -> dict:
        """The text prompt around its texts: ``head`` (before the first), the joiners (between
        two texts; :meth:`_joiner`), ``tail``; ``lead`` / ``trail``: the whitespace moved from
        the neighbours into each line piece (a space belongs to the word after it, a newline
        ends the line); ``pre`` / ``post``: the tokens the tokenizer adds around any text;
        ``ok`` False: the template cannot be cut this way (every prompt is tokenised whole)."""
        if self._layout is not None:
            return self._layout
        one, three = self._split(1), self._split(3)
        lead = three[0][len(three[0].rstrip(" ")):]
        trail = three[3][: len(three[3]) - len(three[3].lstrip("\r\n"))]
        ok = one == [three[0], three[3]] and all(
            s.startswith(trail) and s.endswith(lead) and len(s) >= len(trail) + len(lead)
            for s in three[1:3])
        plain = self._ids(["x"], specials=False)[0]
        full = self._ids(["x"])[0]
        at = next((i for i in range(len(full) - len(plain) + 1)
                   if full[i:i + len(plain)] == plain), None)
        ok = ok and at is not None
        head, tail = self._ids([three[0][: len(three[0]) - len(lead)], three[3][len(trail):]],
                               specials=False)
        self._layout = {"ok": ok, "lead": lead, "trail": trail, "head": head, "tail": tail,
                        "pre": full[:at] if ok else [],
                        "post": full[at + len(plain):] if ok else []}
        return self._layout

    def _joiner(self, k: int) -> list[int] | None:
        """Ids between text k-1 and text k (k >= 2); None if the template cannot be cut or the
        joiner failed its check (a k-line prompt of a checked text, assembled == whole)."""
        if k in self._joiners:
            return self._joiners[k]
        lay = self._user_layout()
        earlier = [self._joiner(j) for j in range(2, k)]
        safe = next((t for t, p in self._line.items() if p is not None), None)
        if not lay["ok"] or any(j is None for j in earlier):
            self._joiners[k] = None
            return None
        if safe is None:  # nothing checked yet to check it with: ask again next time
            return None
        between = self._split(k)[k - 1]
        ids = self._ids([between[len(lay["trail"]):len(between) - len(lay["lead"])]],
                        specials=False)[0]
        whole = self._ids([prompts.wrap(self.family, prompts.user_text([safe] * k))])[0]
        ok = whole == self._assemble([self._line[safe]] * k, [*earlier, ids])
        self._joiners[k] = ids if ok else None
        return self._joiners[k]

    def _joiner2(self) -> list[int]:
        """The first joiner, cut without a check (the per-text check covers it)."""
        lay = self._user_layout()
        if "joiner2" not in lay:
            between = self._split(2)[1]
            lay["joiner2"] = self._ids(
                [between[len(lay["trail"]):len(between) - len(lay["lead"])]], specials=False)[0]
        return lay["joiner2"]

    def _assemble(self, pieces: list[list[int]], joiners: list[list[int]]) -> list[int]:
        lay = self._layout
        out = lay["pre"] + lay["head"] + pieces[0]
        for joiner, piece in zip(joiners, pieces[1:]):
            out += joiner + piece
        return out + lay["tail"] + lay["post"]
