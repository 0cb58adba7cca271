"""Batched `generate()` shared by the backends whose model object is a transformers generator (PyTorch, optimum ORT).

Prompts are rendered with the chat template, sorted by length and left-padded so each batch pads little; the
generated part is everything after the padded prompt length (sliced by tokens, so the prompt never leaks into a bio).
Both runtimes therefore see identical token sequences and decoding settings.
"""

from __future__ import annotations

from typing import Any

from bioserc.batching import length_sorted_chunks
from bioserc.bios.backend import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.chat import render_chat


class HFGenerationBackend(LLMBackend):
    """Subclasses set `self.tokenizer` (left padding), `self.model` (has `.generate` and `.device`), `batch_size`."""

    tokenizer: Any
    model: Any
    batch_size: int = 8

    def render(self, messages: Messages) -> str:
        return render_chat(self.tokenizer, messages)

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        prompts = [self.render(m) for m in batch]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        results: list[Any] = [None] * len(prompts)
        for chunk in length_sorted_chunks(lengths, self.batch_size):
            for i, gen in zip(chunk, self._generate_chunk([prompts[i] for i in chunk], config), strict=True):
                results[i] = gen
        return results

    def _generate_chunk(self, prompts: list[str], config: GenerationConfig) -> list[Generation]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id, "repetition_penalty": config.repetition_penalty,
            "no_repeat_ngram_size": config.no_repeat_ngram_size,
        }
        if config.do_sample:
            torch.manual_seed(config.seed)
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        stop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gens = []
        for row, mask in zip(new.tolist(), enc["attention_mask"], strict=True):
            n = next((k for k, t in enumerate(row) if t in stop), len(row))
            gens.append(Generation(
                text=self.tokenizer.decode(row[:n], skip_special_tokens=True),
                prompt_tokens=int(mask.sum()), new_tokens=n,
                finish_reason="stop" if n < len(row) else "length",
            ))
        return gens
