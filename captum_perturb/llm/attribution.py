"""LLMPerturbationEntropyAttribution: Captum's LLM API for the paper's information measure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from captum.attr import TextTemplateInput, TextTokenInput
from captum.log import log_usage
from torch import Tensor, nn
from typing_extensions import Unpack

from captum_perturb._utils.common import make_generator
from captum_perturb._utils.compat import (
    DEFAULT_GEN_ARGS,
    BaseLLMAttribution,
    convert_ids_to_pretty_tokens,
)
from captum_perturb._utils.hooks import capture
from captum_perturb._utils.model_state import evaluation_mode
from captum_perturb.attr.checks import working_dtype
from captum_perturb.attr.features import dense_groups
from captum_perturb.attr.layer_perturbation_entropy import LayerPerturbationEntropyAttribution
from captum_perturb.config import DEFAULT
from captum_perturb.functional.diagnostics import (
    score_of,
    score_std_error_of,
    warn_if_needed,
)
from captum_perturb.functional.estimate import SigmaEstimate, estimate_sigma
from captum_perturb.functional.moments import FALLBACK_LABEL, embedding_sigma_max
from captum_perturb.layers.information import LayerInformation
from captum_perturb.llm import common as _llm
from captum_perturb.llm.result import LLMPerturbationEntropyResult
from captum_perturb.options import EstimatorOptions, EstimatorSettings, resolve_options


class LLMPerturbationEntropyAttribution(BaseLLMAttribution):
    r"""Which prompt tokens a language model's answer keeps, in nats, through Captum's LLM API.

    The prompt is a Captum :class:`~captum.attr.TextTokenInput` (one feature per token,
    ``skip_tokens`` left noise-free) or :class:`~captum.attr.TextTemplateInput` (one σ
    per segment, shared by its tokens). Noise :math:`\sigma_i` goes on the word
    embeddings of feature :math:`i`; the answer (``target``) is fed with teacher
    forcing, as Captum's ``LLMAttribution(forward_in_tokens=False)`` does, with the KV
    cache off.

    **What is explained.** :math:`\Phi` is the model's next-token distribution, as the
    vector of log-probabilities over the vocabulary, at the answer positions: for
    ``seq_attr`` all :math:`T` of them, :math:`[T \times V]`; for row :math:`t` of
    ``token_attr`` position :math:`t` alone, :math:`[V]`. The distribution is what
    generates the answer, so this is the information the answer keeps about each prompt
    token — for every token it could have been, not only the one chosen (a single
    log-prob is a state of one element, the estimator's noisiest regime). σ_S is the
    spread of each vocabulary entry's log-probability over the positions of a corpus
    (:func:`~captum_perturb.next_token_state_std`); without one, each row is divided by its
    own mean square (the reference code's fallback, with a warning) and scores are not
    comparable across prompts.

    **The scores** are in nats: the default channel score of each embedding dimension
    (``docs/method.rst``) summed over the feature's tokens and dimensions, i.e. the
    information the answer's distributions keep about the feature; 0 for a feature
    without effect. Rows are one batched estimator call (``1 + T`` examples), not ``T + 1``
    calls.

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``), or a module taking
            ``input_ids``/``attention_mask`` and returning ``.logits`` ``(B, L, V)``.
        tokenizer: its tokenizer.
        layer: the module that turns ids into embeddings (default
            ``model.get_input_embeddings()``).
        state_std: σ_S of the next-token log-probabilities, ``(V,)``, from
            :func:`~captum_perturb.next_token_state_std` on prompts like yours.

    Example:
        A tiny random GPT-2 with a word-level tokenizer (any Hugging Face causal LM and
        its tokenizer work the same way):

        >>> import torch, transformers
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from captum.attr import TextTokenInput
        >>> from captum_perturb import LLMPerturbationEntropyAttribution
        >>> words = ["<s>", "the", "film", "is", "a", "charming", "and", "funny", "ride"]
        >>> core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<s>"))
        >>> core.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<s>")
        >>> _ = torch.manual_seed(0)
        >>> model = transformers.GPT2LMHeadModel(
        ...     transformers.GPT2Config(
        ...         vocab_size=len(words), n_positions=16, n_embd=16, n_layer=1, n_head=2
        ...     )
        ... )
        >>> llm_attr = LLMPerturbationEntropyAttribution(model, tok)
        >>> res = llm_attr.attribute(
        ...     TextTokenInput("the film is a", tok),
        ...     target=" charming and funny ride",
        ...     state_std=torch.ones(len(words)),
        ... )
        >>> res.seq_attr.shape, res.token_attr.shape  # prompt tokens; answer × prompt
        (torch.Size([4]), torch.Size([4, 4]))
        >>> res.output_tokens
        ['charming', 'and', 'funny', 'ride']
        >>> bool((res.seq_attr > 0).all())  # nats the answer keeps about each word
        True
    """

    SUPPORTED_INPUTS = (TextTokenInput, TextTemplateInput)
    SUPPORTED_METHODS = (LayerPerturbationEntropyAttribution,)

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        layer: nn.Module | None = None,
        state_std: Tensor | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if layer is None:
            get = getattr(model, "get_input_embeddings", None)
            layer = get() if callable(get) else None
            if not isinstance(layer, nn.Module):
                raise ValueError(
                    f"{type(model).__name__} has no get_input_embeddings(); pass the "
                    "module that turns input_ids into embeddings as layer="
                )
        super().__init__(LayerPerturbationEntropyAttribution(model, layer), tokenizer)
        self.layer = layer
        self.state_std = state_std

    @log_usage(part_of_slo=False)
    def attribute(
        self,
        inp: TextTokenInput | TextTemplateInput,
        target: str | Tensor | None = None,
        gen_args: dict[str, Any] | None = None,
        *,
        per_token: bool = True,
        internal_batch_size: int | None = None,
        options: EstimatorOptions | None = None,
        **settings: Unpack[EstimatorSettings],
    ) -> LLMPerturbationEntropyResult:
        r"""Attribute the answer's next-token distributions to the prompt's features.

        Args:
            inp: the prompt, a ``TextTokenInput`` or ``TextTemplateInput``.
            target: the answer: a string (encoded without special tokens, as Captum
                does), 1-D token ids, or None to generate it with ``gen_args``.
            gen_args: ``model.generate`` arguments when ``target`` is None (Captum's
                default: 25 greedy tokens).
            per_token: also compute ``token_attr`` (``T`` more rows in the same call);
                False gives ``seq_attr`` alone, at about ``1/(1 + T)`` of the cost.
            internal_batch_size: perturbed copies per forward pass (speed and memory), as
                for :meth:`captum_perturb.PerturbationEntropyAttribution.attribute`.
            options: the estimator's settings, :class:`~captum_perturb.EstimatorOptions`
                (σ_S ``(V,)`` defaults to the constructor's ``state_std``; σ_max to 10 ×
                the std of the word-embedding matrix).
            **settings: any of :class:`~captum_perturb.EstimatorOptions`' fields by
                keyword (``rate``, ``sigma_max``, ``state_std``, ``config``, ``seed``,
                ``score``, ``show_progress``), over ``options``.

        Returns:
            An :class:`~captum_perturb.LLMPerturbationEntropyResult` (a Captum
            ``LLMAttributionResult``): ``seq_attr`` ``(n_features,)`` and ``token_attr``
            ``(T, n_features)`` in nats, with standard errors and convergence.

        Raises:
            TypeError: an unsupported input type or target type.
            ValueError: an empty target, ``gen_args`` with a target, a model without
                ``generate`` and no target, a prompt plus answer longer than the model's
                context, or a prompt with nothing to explain.
        """
        if not isinstance(inp, self.SUPPORTED_INPUTS):
            raise TypeError(
                f"{type(self).__name__} takes a captum.attr.TextTokenInput or "
                f"TextTemplateInput, got {type(inp).__name__}"
            )
        opts = resolve_options(options, settings, type(self).__name__)
        score = opts.score or "channel"
        if opts.state_std is not None and not isinstance(opts.state_std, Tensor):
            raise TypeError(f"state_std must be a tensor (V,), got {type(opts.state_std).__name__}")
        prompt, feature = _llm.prompt_features(inp, self.tokenizer)
        if not bool((feature >= 0).any()):
            raise ValueError(
                "the prompt has no token to explain: every token is skipped (skip_tokens) "
                "or outside the template's segments"
            )
        with evaluation_mode([self.model]):
            answer = self._answer(prompt, target, gen_args)
            self._check_length(prompt.shape[1], len(answer))
            ids = torch.cat([prompt[0], answer.cpu()]).unsqueeze(0).to(self.device)
            std = self.state_std if opts.state_std is None else opts.state_std
            opts = replace(opts, state_std=std)
            clean, answer_lp = self._clean(ids, prompt.shape[1], answer)
            est, table = self._estimate(
                ids, clean, feature, len(answer), per_token, opts, internal_batch_size
            )
        warn_if_needed(
            est,
            opts.config or DEFAULT,
            masked=True,
            score=score,
            who=type(self).__name__,
            internal_batch_size=internal_batch_size,
        )
        return self._result(inp, est, table, answer, answer_lp.exp(), score, std is not None)

    def _clean(self, ids: Tensor, n_prompt: int, answer: Tensor) -> tuple[Tensor, Tensor]:
        """One clean pass: the embedding layer's value ``(1, P + T, D)`` in the estimator's
        dtype, and ``(T,)`` each answer token's log-probability."""
        sink: list[Tensor] = []
        with torch.no_grad(), capture(self.layer, sink, stop=False):
            logits = _llm.run_model(self.model, ids)
        clean = sink[0].detach()
        return clean.to(working_dtype(clean.dtype)), _llm.answer_token_log_probs(
            logits, n_prompt, answer
        )[0]

    def _answer(self, prompt: Tensor, target: str | Tensor | None, gen_args: Any) -> Tensor:
        """The target token ids, ``(T,)`` on the CPU, checked."""
        if target is None:
            generate = getattr(self.model, "generate", None)
            if not callable(generate):
                raise ValueError(
                    f"{type(self.model).__name__} has no generate(): pass the answer as "
                    "target= (a string or token ids)"
                )
            ids = prompt.to(self.device)
            with torch.no_grad():
                out = generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    **(gen_args or DEFAULT_GEN_ARGS),
                )
            answer = out[0, ids.shape[1] :].cpu()
        elif gen_args is not None:
            raise ValueError("gen_args is only used to generate the target: pass target=None")
        elif isinstance(target, str):
            answer = torch.tensor(self.tokenizer.encode(target, add_special_tokens=False))
        elif isinstance(target, Tensor) and not target.is_floating_point():
            if target.dim() == 2 and target.shape[0] == 1:
                target = target[0]
            if target.dim() != 1:
                raise ValueError(
                    f"target ids must be 1-D (answer tokens), got shape {tuple(target.shape)}"
                )
            answer = target.detach().cpu().long()
        else:
            raise TypeError(
                f"target must be a string, 1-D integer token ids or None, got "
                f"{type(target).__name__}"
            )
        if answer.numel() == 0:
            raise ValueError(
                "the target has 0 tokens (an empty string, or generation stopped at once): "
                "the answer needs at least one token to explain"
            )
        return answer

    def _check_length(self, n_prompt: int, n_target: int) -> None:
        size = _llm.context_size(self.model)
        if size is not None and n_prompt + n_target > size:
            raise ValueError(
                f"the prompt ({n_prompt} tokens) and the answer ({n_target} tokens) make "
                f"{n_prompt + n_target} tokens, more than the model's context of {size}; "
                "shorten the prompt or the answer (gen_args max_new_tokens)"
            )

    def _estimate(
        self,
        ids: Tensor,
        clean: Tensor,
        feature: Tensor,
        n_target: int,
        per_token: bool,
        opts: EstimatorOptions,
        internal_batch_size: int | None,
    ) -> tuple[SigmaEstimate, Tensor]:
        """One estimator call: rows of the same perturbed prompt, one per explained state.
        Returns the estimate and ``(R, G)`` the feature of each group."""
        n_prompt = ids.shape[1] - n_target
        mask = _llm.row_mask(n_target, per_token).to(clean)
        rows = mask.shape[0]
        values = clean.expand(rows, -1, -1).contiguous()
        full = torch.cat([feature, torch.full((n_target,), -1)]).to(ids.device)
        raw = full.clamp_min(0).view(1, -1, 1).expand_as(values)
        keep = (full >= 0).view(1, -1, 1).expand(rows, -1, 1)
        (groups,), table = dense_groups((raw,), (keep,))
        sigma_max = opts.sigma_max
        if sigma_max is None:
            weight = getattr(self.layer, "weight", None)
            if not isinstance(weight, Tensor):
                raise ValueError("pass sigma_max: the layer has no .weight to take its std from")
            sigma_max = embedding_sigma_max(weight)
        est = estimate_sigma(
            _llm.next_token_state(self.model, self.layer, ids, n_prompt, n_target),
            (values,),
            (groups,),
            sigma_max=sigma_max,
            rate=opts.rate,
            state_std=opts.state_std,  # type: ignore[arg-type]  # checked: a tensor or None
            output_mask=mask,
            config=opts.config or DEFAULT,
            generator=make_generator(opts.seed, values.device),
            batch_size=internal_batch_size,
            show_progress=opts.show_progress,
            progress_desc=f"{type(self).__name__}",
        )
        return est, table

    def _result(
        self,
        inp: Any,
        est: SigmaEstimate,
        table: Tensor,
        answer: Tensor,
        probs: Tensor,
        score: str,
        corpus_std: bool,
    ) -> LLMPerturbationEntropyResult:
        """Scatter the groups' nats onto Captum's features (``format_attr`` for masks)."""
        size = est.group_size
        nats = score_of(est, score).nan_to_num(0.0) * size
        se = score_std_error_of(est, score).nan_to_num(0.0) * size
        n_feat = inp.n_itp_features

        def scatter(x: Tensor) -> Tensor:
            out = torch.zeros(x.shape[0], n_feat, dtype=torch.float32, device=x.device)
            valid = table >= 0
            out[valid.nonzero()[:, 0], table[valid]] = x[valid].float()
            return inp.format_attr(out.cpu())

        attr = scatter(nats)
        return LLMPerturbationEntropyResult(
            seq_attr=attr[0],
            token_attr=attr[1:] if attr.shape[0] > 1 else None,
            input_tokens=inp.values,
            output_tokens=convert_ids_to_pretty_tokens(answer, self.tokenizer),
            output_probs=probs.cpu(),
            inp=inp,
            std_error=scatter(se),
            saturated=scatter(est.saturated.float()).bool(),
            estimate=est,
            normaliser="state_std" if corpus_std else FALLBACK_LABEL,
            score=score,
        )

    def explain_layers(
        self,
        inp: TextTokenInput,
        layers: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> LayerInformation:
        """The paper's question for a decoder: which prompt tokens each layer keeps at the
        answer position (the last prompt token, whose state the answer is read from).

        :func:`~captum_perturb.explain_layers` on the prompt, with the states of the
        last position only and ``skip_tokens`` noise-free; the KV cache is off.

        Args:
            inp: the prompt (a ``TextTokenInput``).
            layers: as for :func:`~captum_perturb.explain_layers` (default all).
            **kwargs: passed on (``state_std=``, ``rate=``, ``config=``, ``seed=`` ...).
        """
        from captum_perturb.layers.explain import explain_layers

        if not isinstance(inp, TextTokenInput):
            raise TypeError(f"explain_layers takes a TextTokenInput, got {type(inp).__name__}")
        ids, feature = _llm.token_features(inp)
        ids = ids.to(self.device)
        at_answer = torch.zeros_like(ids, dtype=torch.bool)
        at_answer[:, -1] = True
        encoding = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "special_tokens_mask": (feature < 0).unsqueeze(0).to(self.device),
        }
        return explain_layers(
            self.model,
            encoding,
            layers,
            special_tokens="exclude",
            tokenizer=self.tokenizer,
            state_positions=at_answer,
            **kwargs,
        )
