"""Prompt encoding for the backbone (UMT5, as Wan does) and a byte-level tokenizer for offline models.

The byte-level tokenizer exists because tests and the tiny preset must build text models without
downloading a vocabulary: every UTF-8 byte is one token, so any prompt encodes, and it saves and
loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any fast tokenizer.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

BYTE_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 (T5 convention: pad 0, eos 1)


def byte_level_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


BYTE_VOCAB_SIZE = len(BYTE_SPECIALS) + 256


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (ftfy when installed, HTML unescape, whitespace collapse)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanPromptEncoder:
    """UMT5 prompt embeddings exactly as diffusers' ``WanPipeline`` makes them, cached per prompt.

    ``encode(prompts) -> [B, max_sequence_length, D]``: hidden states of the real tokens, zeros after.
    Text embeddings are computed once per distinct prompt and reused across chunks and shots.
    """

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = 512, clean: bool = True):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_sequence_length = max_sequence_length
        self.clean = clean
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        from filmweaver.offload import execution_device

        return execution_device(self.text_encoder) or next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        return embed_token_ids(self.text_encoder, ids.to(self.device), mask.to(self.device))

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` each ``[B, max_sequence_length]``, as :meth:`encode` makes them."""
        t = self.tokenized(self.cleaned(prompts), return_attention_mask=True, return_tensors="pt")
        return t.input_ids, t.attention_mask

    def cleaned(self, prompts: list[str]) -> list[str]:
        """The prompts as the tokenizer sees them (Wan's cleaning, where on)."""
        return [clean_prompt(p) for p in prompts] if self.clean else list(prompts)

    def tokenized(self, cleaned: list[str], **extra):
        """The tokenizer's output for already cleaned prompts, padded and cut to ``max_sequence_length``
        (``extra``: more of the tokenizer's options, e.g. ``return_offsets_mapping``)."""
        return self.tokenizer(cleaned, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                              add_special_tokens=True, **extra)

    def coverage(self, prompts: list[str]) -> PromptCoverage:
        """How much of ``prompts`` this encoder sees: unknown words and prompts cut at its length."""
        return prompt_coverage(self.tokenizer, prompts, self.max_sequence_length, self.clean)

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            for p, emb in zip(missing, self._encode_uncached(missing), strict=True):
                self._cache[p] = emb
        return torch.stack([self._cache[p] for p in prompts])


def pooled_embeddings(encoder: WanPromptEncoder, texts: list[str]) -> torch.Tensor:
    """One vector per text ``[N, D]``: the mean of its real tokens' hidden states (names of entities,
    for the entity tags on memory tokens)."""
    emb = encoder.encode(texts).float()
    return mean_over_tokens(emb, encoder.tokenize(texts)[1])


def mean_over_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden [N, L, D]`` averaged over the real tokens of ``mask [N, L]`` -> ``[N, D]``."""
    m = mask.to(hidden.device, hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def embed_token_ids(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """UMT5 hidden states ``[B, L, D]`` of the real tokens, zeros after them (``WanPipeline``'s
    layout). Differentiable: the trainer calls it to train a text encoder jointly."""
    hidden = text_encoder(ids, mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


SENTENCE_END = re.compile(r"[.!?;]")


def entity_spans(prompt: str, names: list[str], spans: str = "mention") -> list[tuple[int, int, int]]:
    """Where ``prompt`` speaks of each of a shot's characters: ``(slot, start, end)`` character spans,
    ``slot`` the character's index in ``names`` (the shot's order). A span starts at each mention of a
    name (a whole word, as written; of two names at one place, the longer) and runs to the next
    mention or to the end of its sentence: "Ada, a purple round creature, and Bo walk." gives Ada
    "Ada, a purple round creature, and " and Bo "Bo walk".

    ``spans="description"``: only the name and the description set off right after it, by commas,
    brackets or a colon to the line's end ("Ada, a purple round creature," / "Ada (a purple round
    creature)" / EntityBench's "Ada: a purple round creature"), never past the next mention or the
    sentence's end: Ada "Ada, a purple round creature" and Bo "Bo"; what the words
    after say (an action, a place) belongs to no one. ``spans="attributes"``: the same description
    without the name (", a purple round creature"), none for a bare name (what regional prompts keep
    to a character's region: the names stay readable everywhere)."""
    found = sorted((m.start(), -m.end(), j) for j, n in enumerate(names) if n
                   for m in re.finditer(rf"(?<!\w){re.escape(n)}(?!\w)", prompt))
    mentions = []
    for start, neg_end, j in found:
        if not mentions or start >= mentions[-1][1]:  # not inside the mention before
            mentions.append((start, -neg_end, j))
    out = []
    for k, (start, end, j) in enumerate(mentions):
        stop = SENTENCE_END.search(prompt, end)
        limit = min(mentions[k + 1][0] if k + 1 < len(mentions) else len(prompt), stop.start() if stop else len(prompt))
        if spans in ("description", "attributes"):
            limit = min(limit, _description_end(prompt, end, limit))
        if spans == "attributes":  # the description without the name
            if limit > end:
                out.append((j, end, limit))
            continue
        out.append((j, start, max(limit, end)))
    return out


def _description_end(prompt: str, end: int, limit: int) -> int:
    """Where the description set off after a name ending at ``end`` stops: the closing comma or
    bracket of ", ...," / " (...)", the line's end after ": ...", else ``end`` (no description)."""
    rest = prompt[end:limit]
    m = re.match(r"\s*\(([^)]*)\)|:[^\n]*", rest)
    if m:
        return end + m.end()
    if rest.startswith(","):
        close = rest.find(",", 1)
        return end + (close if close >= 0 else len(rest))
    return end


def entity_token_slots(encoder: WanPromptEncoder, prompts: list[str], names: list[list[str]],
                       spans: str = "mention") -> torch.Tensor:
    """``[B, L]`` long: for each token of each prompt as :meth:`WanPromptEncoder.tokenize` makes it, the
    slot of the character it speaks of (:func:`entity_spans`; ``names[b]``: prompt ``b``'s characters in
    the shot's order), -1 for none (other words, special tokens, padding). What a backbone with text
    slots adds to the prompt embedding (:func:`filmweaver.backbone.entity_tags.add_text_slots`)."""
    prompts = encoder.cleaned(prompts)
    t = encoder.tokenized(prompts, return_offsets_mapping=True)
    out = torch.full((len(prompts), encoder.max_sequence_length), -1, dtype=torch.long)
    for b, (prompt, offsets) in enumerate(zip(prompts, t["offset_mapping"], strict=True)):
        found = entity_spans(prompt, names[b], spans)
        for i, (lo, hi) in enumerate(offsets):
            if hi > lo:
                out[b, i] = next((j for j, s, e in found if s <= lo < e), -1)
    return out


def word_level_tokenizer(words: list[str], model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A closed-vocabulary tokenizer (lower-cased words and punctuation), for models trained on a
    known grammar such as the synthetic world's. Unknown words map to ``<unk>``. Special ids follow
    T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # letters, or single punctuation marks (as synth.stories.split_words)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^a-z]"), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


@dataclass
class PromptCoverage:
    """What a tokenizer made of a set of prompts: ``unknown`` of ``tokens`` were out of its vocabulary,
    ``truncated`` of ``prompts`` were longer than ``max_length`` tokens and cut."""

    tokens: int
    unknown: int
    prompts: int
    truncated: int
    max_length: int

    @property
    def unknown_share(self) -> float:
        return self.unknown / max(self.tokens, 1)

    def warning(self, who: str) -> str | None:
        """One line for the user when the prompts are not fully seen, else None."""
        parts = []
        if self.unknown:
            parts.append(f"{self.unknown_share:.0%} of the prompts' words are outside its vocabulary")
        if self.truncated:
            parts.append(f"{self.truncated} of {self.prompts} prompts are cut at {self.max_length} tokens")
        if not parts:
            return None
        return f"{who}: " + " and ".join(parts) + " (those words are not seen; a closed-vocabulary model " \
               "such as the built-in one only knows its own world's words)"


def prompt_coverage(tokenizer, prompts: list[str], max_length: int, clean: bool = True) -> PromptCoverage:
    """:class:`PromptCoverage` of ``prompts`` under ``tokenizer`` (special tokens not counted)."""
    prompts = [clean_prompt(p) if clean else p for p in dict.fromkeys(prompts)]
    unk = tokenizer.unk_token_id
    tokens = unknown = truncated = 0
    for ids in tokenizer(prompts, add_special_tokens=True, truncation=False).input_ids:
        truncated += len(ids) > max_length
        real = [i for i in ids if i not in tokenizer.all_special_ids or i == unk]
        tokens += len(real)
        unknown += sum(i == unk for i in real) if unk is not None else 0
    return PromptCoverage(tokens, unknown, len(prompts), truncated, max_length)
