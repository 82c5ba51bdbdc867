"""The ``hf`` sampler: batched G-per-prompt generation with Hugging Face transformers.

Prompts are rendered with the model's chat template (when it has one), left-padded (with
position ids from the attention mask, which ``generate`` derives), and every sample draws its
tokens from its own seeded generator (see :mod:`.seeded`), so a sample depends only on its
prompt, the step seed and its index. The result is a full :class:`rlgen.Rollout`: ids, mask up
to and including the first EOS, decoded texts after the configured post-processors, character
offsets true to those texts, groups, metadata and sampling log-probs.

Decoding: Llama models go through :mod:`.decode_loop` (same tokens as ``generate`` for the same
logits, about twice as fast on CPU: docs/sampling-speed.md), others through ``generate`` (``decode`` param).

Weights: when the trainer lives in this process and exposes its module
(``trainer.policy_module()``), the sampler generates with that very module, so syncing costs
nothing; otherwise it keeps its own copy and loads ``trainer.export_weights()`` into it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Literal

import pydantic
import torch

import rlgen
from rlgen import PluginError

from ..models import check_model_folder, load_causal_lm, load_checked_tokenizer, load_tokenizer
from .completions import assemble, build_rollout, encode_prompts
from .decode_loop import LlamaDecoder, decode, unsupported_reason
from .postprocess import PostProcessStep, build_postprocessor
from .seeded import SeededSampler, sample_seeds


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Generate in eval mode (no dropout) and give a shared training module back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def render_prompt(tokenizer: Any, prompt: rlgen.Prompt, chat_template: bool, chat_template_kwargs: dict) -> str:
    """The prompt text a model sees: its chat template's rendering when it has one and
    ``chat_template`` is on, else the plain messages. Every sampler renders through this, so
    switching samplers never changes what the model is asked."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True, **chat_template_kwargs
        )
    return prompt.text


class HFSampler(rlgen.Sampler):
    """Sample ``group_size`` completions per prompt with ``transformers.generate``."""

    name = "hf"
    description = "transformers generate: chat template, seeded per-sample sampling, EOS mask, offsets, post-processors"

    class Params(rlgen.Params):
        max_new_tokens: int = pydantic.Field(48, ge=1, description="most tokens generated per completion")
        temperature: float = pydantic.Field(1.0, ge=0, description="sampling temperature; 0 decodes greedily")
        top_p: float = pydantic.Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0: off)")
        top_k: int = pydantic.Field(0, ge=0, description="sample among the k most likely tokens (0: off)")
        repetition_penalty: float = pydantic.Field(1.0, gt=0, description="penalty on repeated tokens (1.0: off)")
        stop: list[str] = pydantic.Field(default_factory=list, description="stop strings that end a completion")
        include_stop_str: bool = pydantic.Field(False, description="keep the stop string in the completion text")
        postprocess: list[PostProcessStep] = pydantic.Field(
            default_factory=list,
            description="post-processors applied in order: first_line, strip, strip_quotes, max_chars (name or {name, params})",
        )
        chat_template: bool = pydantic.Field(True, description="render prompts with the model's chat template when it has one")
        chat_template_kwargs: dict[str, Any] = pydantic.Field(
            default_factory=dict, description="extra arguments for the chat template (e.g. enable_thinking: false)"
        )
        batch_size: int | None = pydantic.Field(None, ge=1, description="most sequences per generate call (default: all)")
        threads: int | None = pydantic.Field(
            None, ge=1, description="torch CPU threads (default: the run's, run.threads resolved)"
        )
        device: str = pydantic.Field("auto", description="cpu, cuda, cuda:N, or auto (cuda when available)")
        dtype: Literal["float32", "bfloat16", "float16"] | None = pydantic.Field(
            None, description="dtype of the sampler's own model copy (default: model.dtype)"
        )
        model: str | None = pydantic.Field(None, description="generate with this model instead of model.path")
        decode: Literal["auto", "loop", "generate"] = pydantic.Field(
            "auto",
            description="loop: the sampler's own decode loop (Llama models; each prompt prefilled once, "
            "oneDNN-packed weights on CPU; see docs/sampling-speed.md); generate: transformers generate; "
            "auto: loop where the model is supported, else generate",
        )

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        super().__init__(params)
        self.tokenizer: Any = None
        self._model: torch.nn.Module | None = None
        self._shared = False
        self._model_path: str | None = None
        self._dtype = "float32"
        self._trust_remote_code = False
        self._processors = [build_postprocessor(step) for step in self.params.postprocess]
        # packed decode weights of the sampler's own copy, by batch size; a shared trainer module
        # changes under us between calls, so its weights are packed afresh each call
        self._decoders: dict[int, LlamaDecoder] = {}
        self._checked_tokenizer: Any = None  # loaded by check(), before setup
        self._truncation: dict[str, Any] = {}  # tokenizer arguments of data.long_prompts: truncate

    # -- setup and weights --------------------------------------------------------------------

    def setup(self, context: rlgen.RunContext) -> None:
        config = context.config
        spec = self.params.model or config.model.path
        self._model_path = context.resolve_model(spec)
        tokenizer_spec = getattr(config.model, "tokenizer", None)
        tokenizer_path = context.resolve_model(tokenizer_spec) if tokenizer_spec else self._model_path
        # model.dtype auto: bfloat16 on a CUDA device that supports it, float32 on the CPU (rlgen.choose_compute)
        self._dtype = self.params.dtype or rlgen.detect_compute(config.model.dtype, self.params.device).dtype
        self._trust_remote_code = bool(config.model.trust_remote_code)
        if self._device().type == "cpu":
            torch.set_num_threads(self.params.threads or context.threads)
        self.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code=self._trust_remote_code, padding_side="left")
        self._truncation = self._prompt_truncation(context)

    def _device(self) -> torch.device:
        if self.params.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.params.device)

    def _require_setup(self) -> None:
        if self.tokenizer is None or self._model_path is None:
            raise PluginError("sampler 'hf': setup(context) must run before generate or sync_weights")

    def _own_model(self) -> torch.nn.Module:
        """The sampler's own copy, loaded on first need (never while a trainer's module is shared)."""
        self._require_setup()
        if self._model is None or self._shared:
            self._model = load_causal_lm(
                self._model_path, dtype=self._dtype, trust_remote_code=self._trust_remote_code, device=self._device()
            )
            self._model.requires_grad_(False)
            self._shared = False
            self._decoders.clear()
        return self._model

    def sync_weights(self, trainer: rlgen.Trainer) -> dict[str, float]:
        """Share the trainer's live module if it offers one; else copy its exported weights into ours."""
        self._require_setup()
        self._decoders.clear()
        t0 = time.perf_counter()
        module = trainer.policy_module()
        if module is not None:
            self._model, self._shared = module, True  # a previous own copy is released here
            return {"sync_s": time.perf_counter() - t0, "sync_shared": 1.0}
        model = self._own_model()
        targets = model.state_dict(keep_vars=True)  # tied weights appear under both names
        loaded: set[int] = set()
        n = 0
        with torch.no_grad():
            for name, tensor in trainer.export_weights():
                if name not in targets:
                    raise PluginError(
                        f"sampler 'hf': trainer '{trainer.name}' exported '{name}', which the sampler's model has no slot for"
                    )
                targets[name].data.copy_(tensor.to(device=targets[name].device, dtype=targets[name].dtype))
                loaded.add(targets[name].data_ptr())
                n += 1
        missing = [k for k, p in model.named_parameters() if p.data_ptr() not in loaded]
        if missing:
            raise PluginError(
                f"sampler 'hf': trainer '{trainer.name}' exported no weights for {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
        return {"sync_s": time.perf_counter() - t0, "sync_shared": 0.0, "sync_tensors": float(n)}

    def close(self) -> None:
        self._model = None
        self._decoders.clear()

    # -- generation -----------------------------------------------------------------------

    def render(self, prompt: rlgen.Prompt) -> str:
        """The prompt text the model sees: the chat template's rendering, or the plain messages."""
        return render_prompt(self.tokenizer, prompt, self.params.chat_template, self.params.chat_template_kwargs)

    def _eos_ids(self, model: torch.nn.Module) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return {int(i) for i in ids if i is not None}

    def _generation_config(self, eos_ids: set[int]) -> Any:
        from transformers import GenerationConfig

        # Greedy over the one token SeededSampler allows. Knobs that would add a logits processor
        # before ours are set explicitly, so nothing from the model's generation_config.json
        # changes the distribution; sampling warpers are unused in greedy mode.
        return GenerationConfig(
            max_new_tokens=self.params.max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            eos_token_id=sorted(eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=list(self.params.stop) or None,
            use_cache=True,
            return_dict_in_generate=False,
        )

    def _use_loop(self, model: torch.nn.Module) -> bool:
        if self.params.decode == "generate":
            return False
        reason = unsupported_reason(model)
        if reason and self.params.decode == "loop":
            raise PluginError(f"sampler 'hf': sampler.params.decode is 'loop', but the decode loop does not support {reason}")
        return reason is None

    def _decoder(self, model: torch.nn.Module, rows: int) -> LlamaDecoder:
        if self._shared:
            return LlamaDecoder(model, rows)
        if rows not in self._decoders:
            self._decoders[rows] = LlamaDecoder(model, rows)
        return self._decoders[rows]

    def _stopping_criteria(self, eos_ids: set[int]) -> Any:
        """EOS and stop strings, the criteria ``generate`` builds from the same settings."""
        from transformers import StoppingCriteriaList
        from transformers.generation.stopping_criteria import EosTokenCriteria, StopStringCriteria

        criteria = StoppingCriteriaList([EosTokenCriteria(eos_token_id=sorted(eos_ids))])
        if self.params.stop:
            criteria.append(StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(self.params.stop)))
        return criteria

    def generate(self, prompts: list[rlgen.Prompt], group_size: int, seed: int) -> rlgen.Rollout:
        from transformers import LogitsProcessorList

        self._require_setup()
        if not prompts:
            raise PluginError("sampler 'hf': generate was given no prompts")
        model = self._model if self._model is not None else self._own_model()
        device = next(model.parameters()).device
        p = self.params
        chat = p.chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        encoded = encode_prompts(self.tokenizer, [self.render(pr) for pr in prompts], group_size, chat,
                                 **self._truncation)
        prompt_ids, prompt_mask = encoded.prompt_ids, encoded.prompt_mask
        seeds = sample_seeds(seed, len(prompts), group_size)
        eos_ids = self._eos_ids(model)
        gen_config = self._generation_config(eos_ids)
        b = prompt_ids.shape[0]
        chunk = p.batch_size or b
        completions, logprobs = [], []
        t0 = time.perf_counter()
        use_loop = self._use_loop(model)
        prompt_of_row = torch.arange(len(prompts)).repeat_interleave(group_size)
        for lo in range(0, b, chunk):
            hi = min(b, lo + chunk)
            sampler = SeededSampler(seeds[lo:hi], p.temperature, p.top_k, p.top_p, p.repetition_penalty)
            with torch.no_grad(), _eval_mode(model):
                if use_loop:
                    rows = prompt_of_row[lo:hi]
                    distinct, rows = torch.unique(rows, return_inverse=True)
                    out = decode(
                        self._decoder(model, hi - lo), encoded.input_ids[distinct], encoded.attention_mask[distinct],
                        rows, p.max_new_tokens, sampler, self._stopping_criteria(eos_ids),
                        self.tokenizer.pad_token_id,
                    )
                else:
                    out = model.generate(
                        input_ids=prompt_ids[lo:hi].to(device),
                        attention_mask=prompt_mask[lo:hi].long().to(device),
                        generation_config=gen_config,
                        logits_processor=LogitsProcessorList([sampler]),
                        tokenizer=self.tokenizer if p.stop else None,
                    )
            gen = out[:, prompt_ids.shape[1] :].cpu()
            tokens, lps = sampler.sampled()
            steps = min(gen.shape[1], tokens.shape[1])
            # generate pads a row once it finished; the first step where the output differs from
            # what the row sampled is where it ended
            differs = gen[:, :steps] != tokens[:, :steps]
            generated = torch.where(differs.any(dim=1), differs.float().argmax(dim=1), torch.full((hi - lo,), steps))
            for i in range(hi - lo):
                completions.append(
                    assemble(
                        self.tokenizer, gen[i, :steps].tolist(), int(generated[i]), eos_ids, p.stop,
                        p.include_stop_str, self._processors, p.max_new_tokens,
                    )
                )
            logprobs.append(torch.nn.functional.pad(lps, (0, p.max_new_tokens - lps.shape[1])))
        gen_s = time.perf_counter() - t0
        return build_rollout(
            prompts, encoded, completions, torch.cat(logprobs, dim=0), pad_id=self.tokenizer.pad_token_id,
            temperature=p.temperature,
            extras={
                "lengths": [len(c.ids) for c in completions],  # tokens generated, EOS included
                "sample_seeds": seeds,
                "generate_s": gen_s,
                "decode": "loop" if use_loop else "generate",
            },
        )

    # -- checks before the run (rlgen validate, train): files and tokenizer, no weights -------

    def _model_key(self, context: rlgen.RunContext) -> tuple[str, str]:
        return ("sampler.params.model", self.params.model) if self.params.model else ("model.path", context.config.model.path)

    def check(self, context: rlgen.RunContext) -> None:
        """The model folder exists with config.json, and the tokenizer loads (offline: from a folder or the HF cache)."""
        key, spec = self._model_key(context)
        model_path = context.resolve_model(spec)
        tokenizer_spec = context.config.model.tokenizer
        check_model_folder(model_path, key, tokenizer=not tokenizer_spec)
        tok_key, tok_path = ("model.tokenizer", context.resolve_model(tokenizer_spec)) if tokenizer_spec else (key, model_path)
        self._checked_tokenizer = load_checked_tokenizer(tok_path, tok_key, trust_remote_code=context.config.model.trust_remote_code)

    def max_prompt_tokens(self, context: rlgen.RunContext) -> int | None:
        """The model's ``max_position_embeddings`` less ``max_new_tokens``; None when its config does not say."""
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(context.resolve_model(self._model_key(context)[1]),
                                                      trust_remote_code=context.config.model.trust_remote_code)
        except Exception:  # check() reports unloadable models; without a config the limit is unknown
            return None
        positions = getattr(model_config, "max_position_embeddings", None)
        return max(int(positions) - self.params.max_new_tokens, 0) if positions else None

    def prompt_token_counts(self, context: rlgen.RunContext, prompts: list[rlgen.Prompt]) -> list[int] | None:
        """Tokens of each prompt as ``generate`` renders and encodes it."""
        tokenizer = self.tokenizer or self._checked_tokenizer
        if tokenizer is None:
            self.check(context)
            tokenizer = self._checked_tokenizer
        chat = self.params.chat_template and bool(getattr(tokenizer, "chat_template", None))
        rendered = [render_prompt(tokenizer, p, self.params.chat_template, self.params.chat_template_kwargs) for p in prompts]
        return [len(ids) for ids in tokenizer(rendered, add_special_tokens=not chat, verbose=False)["input_ids"]]

    def _prompt_truncation(self, context: rlgen.RunContext) -> dict[str, Any]:
        """With ``data.long_prompts: truncate``, encode prompts to at most the limit, keeping their end
        (the turn the model answers, the chat template's generation prompt)."""
        data = context.config.data
        if data.long_prompts != "truncate":
            return {}
        limits = [n for n in (data.max_prompt_tokens, self.max_prompt_tokens(context)) if n]
        if not limits:
            return {}
        self.tokenizer.truncation_side = "left"
        return {"truncation": True, "max_length": min(limits)}
