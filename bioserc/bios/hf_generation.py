"""Batched `generate()` shared by the backends whose model object is a transformers generator (PyTorch, optimum ORT).

Prompts are rendered with the chat template and tokenized once. Prompts that start with the same tokens (the speakers
of one conversation: the same system message and transcript) form a group whose shared prefix is prefilled once and
whose KV cache is then copied to every member (`bioserc.bios.prefix`). A batch holds whole groups of similar length:

    [pad .. pad | shared prefix of group g | pad .. pad | rest of member m's prompt]  ->  generated tokens

The attention mask hides both pad runs and position ids count only real tokens, so every row sees exactly its own
prompt; the generated part is everything after the padded prompt (sliced by tokens, so the prompt never leaks into a
bio). Both runtimes see identical token sequences and decoding settings. `counts` adds up the tokens computed.

`prefill_last` lays out the same rows but does not decode: after the shared prefill, one forward pass over the rest
gives each prompt's last-token logits (and final hidden state), the `scores` and `latent` speaker profiles. On CPU
it runs one group (one conversation) per forward pass: without decoding there is nothing for a batch to amortise
there, and packing transcripts of different lengths into one batch only adds pad columns to compute.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from bioserc.bios.base import Generation, GenerationConfig, LastState, LLMBackend, Messages
from bioserc.bios.chat import render_chat
from bioserc.bios.prefix import PrefixGroup, pack_groups, prefix_groups, split_groups


class Layout(NamedTuple):
    """A chunk's padded rows: `width` prefix columns, then `tail` columns that end with each prompt's last token."""

    input_ids: Any
    attention_mask: Any
    masks: list[list[int]]
    width: int
    tail: int
    rest_tokens: int  # real tokens after the prefixes, all rows together


class HFGenerationBackend(LLMBackend):
    """Subclasses set `self.tokenizer`, `self.model` (has `.generate`, `.device` and a KV cache) and `batch_size`.

    `share_prefix=False` gives every prompt its own full prefill (the reference path benchmarks compare against).
    """

    tokenizer: Any
    model: Any
    batch_size: int = 8
    share_prefix: bool = True
    counts: Counter  # tokens and slots computed so far, for benchmarks and logs; subclasses start it empty

    def render(self, messages: Messages) -> str:
        return render_chat(self.tokenizer, messages)

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prefill_outputs(self) -> tuple[str, ...]:
        """A PyTorch model returns hidden states; an ONNX export (optimum) returns logits and the KV cache only."""
        import torch

        return ("logits", "hidden") if isinstance(self.model, torch.nn.Module) else ("logits",)

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        return self._by_chunks(batch, lambda chunk, ids: self._generate_chunk(chunk, ids, config))

    def prefill_last(self, batch: list[Messages], hidden: bool = False) -> list[LastState]:
        if hidden and "hidden" not in self.prefill_outputs():
            raise ValueError(f"the {self.name} backend returns logits but no hidden states")
        alone = self.share_prefix and self.model.device.type == "cpu"
        return self._by_chunks(batch, lambda chunk, ids: self._last_chunk(chunk, ids, hidden), alone)

    def _by_chunks(
        self,
        batch: list[Messages],
        run: Callable[[list[PrefixGroup], list[list[int]]], list],
        group_alone: bool = False,
    ) -> list:
        """Tokenize, group by shared prefix, pack into batches (or one group per batch) and `run` each; results in
        input order."""
        if not batch:
            return []
        ids = self.tokenizer([self.render(m) for m in batch], add_special_tokens=False)["input_ids"]
        groups = prefix_groups(ids) if self.share_prefix else [PrefixGroup([i], 0) for i in range(len(ids))]
        results: list[Any] = [None] * len(ids)
        chunks = (
            [[g] for g in split_groups(groups, self.batch_size)]
            if group_alone
            else pack_groups(groups, [len(s) for s in ids], self.batch_size)
        )
        for chunk in chunks:
            members = [i for g in chunk for i in g.members]
            for i, out in zip(members, run(chunk, ids), strict=True):
                results[i] = out
        return results

    def _layout(self, groups: list[PrefixGroup], ids: list[list[int]]) -> Layout:
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(g.shared for g in groups)  # prefix columns
        rests = {i: ids[i][g.shared :] for g in groups for i in g.members}
        tail = max(len(r) for r in rests.values())
        rows, masks = [], []
        for g in groups:
            lead = width - g.shared
            for i in g.members:
                gap = tail - len(rests[i])
                rows.append([pad] * lead + ids[i][: g.shared] + [pad] * gap + rests[i])
                masks.append([0] * lead + [1] * g.shared + [0] * gap + [1] * len(rests[i]))
        device = self.model.device
        return Layout(
            torch.tensor(rows, device=device),
            torch.tensor(masks, device=device),
            masks,
            width,
            tail,
            sum(len(r) for r in rests.values()),
        )

    def _keep_last_logits(self) -> dict[str, Any]:
        """Skip the vocabulary projection of all but the last position where the model can (transformers models with
        `logits_to_keep`): a prefill of a long transcript otherwise materialises vocab x tokens logits. Optimum's ONNX
        models always return them all."""
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}

    def _generate_chunk(
        self, groups: list[PrefixGroup], ids: list[list[int]], config: GenerationConfig
    ) -> list[Generation]:
        import torch

        input_ids, attention_mask, masks, width, tail, rest_tokens = self._layout(groups, ids)
        with torch.inference_mode():
            past = self._prefill(groups, input_ids[:, :width], attention_mask[:, :width]) if width else None
            if config.do_sample:
                rows, decode_slots = self._sample(input_ids, attention_mask, past, config)
            else:
                rows, decode_slots = self._greedy(input_ids, attention_mask, past, width, config)
        stop = self._stop_ids()
        gens = []
        for row, mask in zip(rows, masks, strict=True):
            n = next((k for k, t in enumerate(row) if t in stop), len(row))
            gens.append(
                Generation(
                    text=self.tokenizer.decode(row[:n], skip_special_tokens=True),
                    prompt_tokens=sum(mask),
                    new_tokens=n,
                    finish_reason="stop" if n < len(row) else "length",
                )
            )
        self.counts.update(
            prompts=len(masks),
            prompt_tokens=sum(map(sum, masks)),
            generated_tokens=sum(g.new_tokens for g in gens),
            prefilled_tokens=sum(g.shared for g in groups) + rest_tokens,
            prefill_slots=len(groups) * width + len(masks) * tail,
            decode_slots=decode_slots,
        )
        return gens

    def _stop_ids(self) -> set[int]:
        """Tokens that end a bio: the model's end-of-sequence id(s), as `generate` stops on them, and the pad token."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        return {t for t in [*eos, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id] if t is not None}

    def _greedy(
        self, input_ids: Any, attention_mask: Any, past: Any, width: int, config: GenerationConfig
    ) -> tuple[list[list[int]], int]:
        """Greedy decoding, each row leaving the batch at its first stop token, so later steps compute only the bios
        still being written (`generate` keeps computing finished rows until the longest ends: 21-24% of decode
        slots on MELD). Same logits processors as `generate` (repetition penalty, then no-repeat n-grams) over the
        same token rows, so the tokens are the same. Returns each row's new tokens and the decode slots computed."""
        import torch
        from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        processors = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        stop = torch.tensor(sorted(self._stop_ids()), device=input_ids.device)
        position = positions(attention_mask)
        step_ids, step_positions = input_ids[:, width:], position[:, width:]  # the first step: the unshared rest
        seqs, mask, alive = input_ids, attention_mask, list(range(len(input_ids)))
        new: list[list[int]] = [[] for _ in alive]
        slots = 0
        for step in range(config.max_new_tokens):
            out = self.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=past,
                use_cache=True,
                **self._keep_last_logits(),
            )
            tokens = processors(seqs, out.logits[:, -1].float()).argmax(-1)
            slots += len(alive)
            for row, token in zip(alive, tokens.tolist(), strict=True):
                new[row].append(token)
            going = ~torch.isin(tokens, stop)
            if step == config.max_new_tokens - 1 or not bool(going.any()):
                break
            seqs = torch.cat([seqs, tokens[:, None]], dim=-1)
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=-1)
            past = out.past_key_values
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                alive = [alive[k] for k in keep.tolist()]
                seqs, mask, tokens, past = seqs[keep], mask[keep], tokens[keep], repeat_rows(past, keep)
            step_ids, step_positions = tokens[:, None], mask.long().sum(-1, keepdim=True) - 1
        return new, slots

    def _sample(
        self, input_ids: Any, attention_mask: Any, past: Any, config: GenerationConfig
    ) -> tuple[list[list[int]], int]:
        """Sampling through `generate` (seeded), whose random draws depend on the whole batch staying together."""
        import torch

        torch.manual_seed(config.seed)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=past,
            do_sample=True,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            temperature=config.temperature,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
            no_repeat_ngram_size=config.no_repeat_ngram_size,
        )
        new = out[:, input_ids.shape[1] :]
        return new.tolist(), new.numel()

    def _last_chunk(self, groups: list[PrefixGroup], ids: list[list[int]], hidden: bool) -> list[LastState]:
        """The shared prefixes prefilled once, then one forward pass over every row's rest; its last column is each
        prompt's last token (rows are left-padded), with position ids counting only real tokens as in generation."""
        import torch

        input_ids, attention_mask, masks, width, tail, rest_tokens = self._layout(groups, ids)
        position_ids = positions(attention_mask)
        with torch.inference_mode():
            past = self._prefill(groups, input_ids[:, :width], attention_mask[:, :width]) if width else None
            out = self.model(
                input_ids=input_ids[:, width:],
                attention_mask=attention_mask,
                position_ids=position_ids[:, width:],
                past_key_values=past,
                output_hidden_states=hidden,
                **self._keep_last_logits(),
            )
        logits = out.logits[:, -1].float().cpu().numpy()
        states = out.hidden_states[-1][:, -1].float().cpu().numpy() if hidden else [None] * len(masks)
        self.counts.update(
            prompts=len(masks),
            prompt_tokens=sum(map(sum, masks)),
            prefilled_tokens=sum(g.shared for g in groups) + rest_tokens,
            prefill_slots=len(groups) * width + len(masks) * tail,
        )
        return [LastState(row, state, sum(mask)) for row, state, mask in zip(logits, states, masks, strict=True)]

    def _prefill(self, groups: list[PrefixGroup], prefix_ids: Any, prefix_mask: Any) -> Any:
        """Run each group's shared prefix once (one row per group), then repeat its KV cache for every member."""
        import torch

        firsts, index, start = [], [], 0
        for n, g in enumerate(groups):
            firsts.append(start)
            index += [n] * len(g.members)
            start += len(g.members)
        ids, mask = prefix_ids[firsts], prefix_mask[firsts]
        position_ids = positions(mask)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **self._keep_last_logits()
        )
        return repeat_rows(out.past_key_values, torch.tensor(index, device=ids.device))


def positions(mask: Any) -> Any:
    """Position ids that count only a row's real tokens (pads, anywhere in the row, get a dummy 1), as `generate`
    derives them from the attention mask."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def repeat_rows(cache: Any, index: Any) -> Any:
    """The cache's batch rows picked by `index` (a group's row once per member): a transformers `Cache` object, or the
    legacy tuple of (key, value) per layer that optimum's ONNX Runtime models return."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
