"""SAM: guided visual-token extraction on top of transformers' InstructBLIP (DESIGN.md §1).

Notation used in the shape comments:
    B batch, N images per sample, P patches per image (incl. CLS), D vision width,
    S = K + T Q-Former sequence (K learned queries + T instruction tokens), d Q-Former width,
    H Q-Former heads, L Q-Former layers, e exchange layer, d_llm language-model width.

Two streams run through the *same* Q-Former layers on the same input x0 = [queries; instruction]:
stream A (the Q-Former proper) cross-attends to the image's own patches F_i, stream B (the "W-former")
to a context image pooled over the set with the patch scorer's per-patch softmax over images. At layer e
the streams exchange information through two zero-initialised linears, so an untrained SAM is exactly
the baseline (plain InstructBLIP applied to each image independently).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import InstructBlipForConditionalGeneration
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask

from .configuration import SamConfig


@dataclass
class SamVisualTokens:
    """What the guided (or baseline) extraction produces for a batch of image sets.

    visual_tokens: (B, N, K, d_llm) projected Q-Former queries, fed to the LLM in image order.
    query_states: (B, N, K, d) Q-Former query outputs before the projection.
    patch_features: (B, N, P, D) vision-encoder features (after its final layer norm).
    guidance_weights: α of the adaptive adjustment; (B, N, P) for context="all" (softmax over images
        per patch), (B, N_target, N_source, P) for context="others" (zero on the diagonal). None for the
        baseline and for single-image sets.
    image_cross_attentions / context_cross_attentions: on request, one entry per Q-Former layer,
        (B, N, H, K, P) cross-attention probabilities of the query tokens, None for layers without
        cross-attention (and for the context stream's layers after the exchange, which SAM never runs).
    guided: whether guidance actually acted (False for the baseline and for N=1).
    """

    visual_tokens: torch.FloatTensor
    query_states: torch.FloatTensor
    patch_features: torch.FloatTensor
    guidance_weights: torch.FloatTensor | None = None
    image_cross_attentions: tuple[torch.FloatTensor | None, ...] | None = None
    context_cross_attentions: tuple[torch.FloatTensor | None, ...] | None = None
    guided: bool = False


@dataclass
class SamOutput:
    """Language-model output for one mode. loss: answer-only LM loss when labels are given;
    logits: (B, seq, vocab); visual: the extraction that fed it."""

    loss: torch.FloatTensor | None
    logits: torch.FloatTensor
    visual: SamVisualTokens


class SamGuidance(nn.Module):
    """The three trainable pieces SAM adds (about 1.18 M parameters at full size)."""

    def __init__(self, config: SamConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        qformer_width = config.qformer_config.hidden_size
        self.patch_scorer = nn.Linear(vision_width, 1)  # s: adaptive adjustment
        self.image_to_context = nn.Linear(qformer_width, qformer_width)  # A→B, zero-initialised
        self.context_to_image = nn.Linear(qformer_width, qformer_width)  # B→A, zero-initialised

    def guide_context(self, hidden_context: torch.Tensor, hidden_image: torch.Tensor) -> torch.Tensor:
        """hB + A→B(hA): the current image's tokens guide context selection (weights may be fp32 over fp16 states)."""
        weight = self.image_to_context.weight
        return hidden_context + self.image_to_context(hidden_image.to(weight.dtype)).to(hidden_context.dtype)

    def guide_image(self, hidden_image: torch.Tensor, hidden_context: torch.Tensor) -> torch.Tensor:
        """hA + B→A(hB'): the selected contextual semantics guide extraction."""
        weight = self.context_to_image.weight
        return hidden_image + self.context_to_image(hidden_context.to(weight.dtype)).to(hidden_image.dtype)

    def context_features(self, patch_features: torch.Tensor, context: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool the context image(s) Î from the patch features F (B, N, P, D).

        Returns (alpha, context_features):
            "all":    alpha (B, N, P),    Î (B, P, D)     — one context shared by every image;
            "others": alpha (B, N, N, P), Î (B, N, P, D)  — image i's context pools images j ≠ i.
        """
        scores = self.patch_scorer(patch_features.to(self.patch_scorer.weight.dtype)).squeeze(-1).float()  # (B, N, P)
        if context == "all":
            alpha = scores.softmax(dim=1)  # (B, N, P)
            pooled = torch.einsum("bnp,bnpd->bpd", alpha.to(patch_features.dtype), patch_features)
            return alpha, pooled
        num_images = scores.shape[1]
        own_image = torch.eye(num_images, dtype=torch.bool, device=scores.device)[None, :, :, None]  # (1, N, N, 1)
        pair_scores = scores[:, None, :, :].expand(-1, num_images, -1, -1)  # (B, N_target, N_source, P)
        alpha = pair_scores.masked_fill(own_image, float("-inf")).softmax(dim=2)  # (B, N, N, P)
        pooled = torch.einsum("btsp,bspd->btpd", alpha.to(patch_features.dtype), patch_features)
        return alpha, pooled


class SamForConditionalGeneration(InstructBlipForConditionalGeneration):
    """InstructBLIP with SAM's bidirectional semantic guidance; `guidance=False` is the baseline.

    The parent's modules (vision_model, query_tokens, qformer, language_projection, language_model) are used
    unchanged; SAM only adds `self.guidance` and drives the Q-Former layer by layer.
    """

    config_class = SamConfig
    config: SamConfig
    # A plain InstructBLIP checkpoint has no SAM weights: they start at zero-init guidance (= the baseline).
    _keys_to_ignore_on_load_missing = [r"guidance\."]

    def __init__(self, config: SamConfig):
        super().__init__(config)
        self.guidance = SamGuidance(config)
        self.post_init()

    def _init_weights(self, module):
        """Zero-initialise the exchange layers. Dispatched on the Linear modules themselves: transformers
        skips init for modules without direct parameters (such as SamGuidance) in models defined outside it."""
        guidance = self.__dict__.get("_modules", {}).get("guidance")
        if guidance is not None and module in (guidance.image_to_context, guidance.context_to_image):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    @property
    def guidance_is_identity(self) -> bool:
        """True while both exchange layers are zero: SAM then equals the baseline exactly."""
        return all(
            not param.detach().any()
            for exchange in (self.guidance.image_to_context, self.guidance.context_to_image)
            for param in exchange.parameters()
        )

    # ------------------------------------------------------------------ vision

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision encoder + final layer norm over all B·N images in one call: (B, N, 3, H, W) → (B, N, P, D)."""
        batch, num_images = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1).to(self.vision_model.embeddings.patch_embedding.weight.dtype)
        features = self.vision_model(pixel_values=flat).last_hidden_state  # (B·N, P, D)
        return features.unflatten(0, (batch, num_images))

    # ------------------------------------------------------------------ Q-Former

    @contextmanager
    def _eager_qformer_attention(self, enabled: bool):
        """Attention probabilities exist only under eager attention; switch to it while capturing."""
        qformer_config = self.qformer.config
        previous = qformer_config._attn_implementation
        if enabled:
            qformer_config._attn_implementation = "eager"
        try:
            yield
        finally:
            qformer_config._attn_implementation = previous

    def _qformer_layer(self, index, hidden, self_mask, keys_values, attentions: list | None) -> torch.Tensor:
        """One Q-Former layer; stores its query→patch attention probabilities in `attentions[index]` if asked."""
        layer = self.qformer.encoder.layer[index]
        query_length = self.config.num_query_tokens
        if attentions is None or not layer.has_cross_attention:
            return layer(hidden, self_mask, keys_values, query_length=query_length)
        captured = []
        hook = layer.crossattention.attention.register_forward_hook(lambda _m, _i, out: captured.append(out[1]))
        try:
            hidden = layer(hidden, self_mask, keys_values, query_length=query_length)
        finally:
            hook.remove()
        attentions[index] = captured[0]  # (rows, H, K, P)
        return hidden

    def _qformer_inputs(self, qformer_input_ids, qformer_attention_mask, batch):
        """x0 = [queries; instruction] embedded once per sample, and its self-attention mask."""
        queries = self.query_tokens.expand(batch, -1, -1)  # (B, K, d)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        query_mask = torch.ones(queries.shape[:2], dtype=qformer_attention_mask.dtype, device=queries.device)
        mask_2d = torch.cat([query_mask, qformer_attention_mask.to(queries.device)], dim=1)  # (B, S)
        x0 = self.qformer.embeddings(input_ids=qformer_input_ids.to(queries.device), query_embeds=queries)
        return x0, mask_2d  # (B, S, d), (B, S)

    def _self_mask(self, hidden, mask_2d):
        return create_bidirectional_mask(config=self.qformer.config, inputs_embeds=hidden, attention_mask=mask_2d)

    def _extract(
        self,
        patch_features: torch.Tensor,
        qformer_input_ids: torch.Tensor,
        qformer_attention_mask: torch.Tensor | None,
        modes: tuple[str, ...],
        output_attentions: bool,
    ) -> dict[str, SamVisualTokens]:
        """Run the Q-Former for the requested modes ("sam", "baseline") sharing all work they have in common.

        Before the exchange layer e, stream A (B·N rows, over F_i) and stream B (over Î: B rows for
        context="all", one per sample, or B·N rows for "others") run as one batched call per layer; stream A's
        rows there are shared by SAM and the baseline. The exchange layer then runs twice over B·N rows and
        the remaining layers once. No per-image Python loop.
        """
        batch, num_images = patch_features.shape[:2]
        num_layers = self.config.qformer_config.num_hidden_layers
        image_rows = batch * num_images
        guided = "sam" in modes and num_images > 1
        exchange = self.config.exchange_layer if guided else num_layers
        context = self.config.context

        with self._eager_qformer_attention(output_attentions):
            x0, mask_2d = self._qformer_inputs(qformer_input_ids, qformer_attention_mask, batch)
            x0 = x0.to(patch_features.dtype)  # (B, S, d)
            image_mask_2d = mask_2d.repeat_interleave(num_images, dim=0)  # (B·N, S)
            image_kv = patch_features.flatten(0, 1)  # (B·N, P, D)
            hidden = x0.repeat_interleave(num_images, dim=0)  # stream A: (B·N, S, d)
            keys_values, joint_mask_2d = image_kv, image_mask_2d
            alpha = None
            if guided:
                alpha, context_features = self.guidance.context_features(patch_features, context)
                if context == "all":  # one context per sample: its pre-exchange layers run once, not N times
                    context_rows, context_kv, context_mask_2d = x0, context_features, mask_2d  # (B, …)
                else:
                    context_rows, context_kv, context_mask_2d = hidden, context_features.flatten(0, 1), image_mask_2d
                hidden = torch.cat([hidden, context_rows])  # (B·N + B or 2·B·N, S, d)
                keys_values = torch.cat([image_kv, context_kv])
                joint_mask_2d = torch.cat([image_mask_2d, context_mask_2d])
            joint_mask = self._self_mask(hidden, joint_mask_2d)
            attn = [None] * num_layers if output_attentions else None
            for index in range(exchange):
                hidden = self._qformer_layer(index, hidden, joint_mask, keys_values, attn)

            hidden_a = hidden[:image_rows]
            image_mask = self._self_mask(hidden_a, image_mask_2d)
            image_attn = split_rows(attn, 0, image_rows)
            results = {}
            if "baseline" in modes or not guided:
                baseline_hidden, baseline_attn = hidden_a, copy_list(image_attn)
                for index in range(exchange, num_layers):
                    baseline_hidden = self._qformer_layer(index, baseline_hidden, image_mask, image_kv, baseline_attn)
                results["baseline"] = self._finish(baseline_hidden, patch_features, None, baseline_attn, None, False)
                results.setdefault("sam", results["baseline"])
            if guided:
                context_attn = split_rows(attn, image_rows, None)
                hidden_b = hidden[image_rows:]
                if context == "all":
                    hidden_b = hidden_b.repeat_interleave(num_images, dim=0)  # (B·N, S, d)
                    context_kv = context_kv.repeat_interleave(num_images, dim=0)  # (B·N, P, D)
                    context_attn = repeat_rows(context_attn, num_images)
                # Bidirectional exchange at layer e (out-of-place adds over the whole sequence).
                hidden_b = self.guidance.guide_context(hidden_b, hidden_a)
                hidden_b = self._qformer_layer(exchange, hidden_b, image_mask, context_kv, context_attn)
                sam_hidden = self.guidance.guide_image(hidden_a, hidden_b)
                sam_attn = copy_list(image_attn)
                for index in range(exchange, num_layers):
                    sam_hidden = self._qformer_layer(index, sam_hidden, image_mask, image_kv, sam_attn)
                results["sam"] = self._finish(sam_hidden, patch_features, alpha, sam_attn, context_attn, True)
        return results

    def _finish(self, hidden, patch_features, alpha, image_attn, context_attn, guided) -> SamVisualTokens:
        batch, num_images = patch_features.shape[:2]
        query_length = self.config.num_query_tokens
        query_states = hidden[:, :query_length, :]  # (B·N, K, d)
        tokens = self.language_projection(query_states.to(self.language_projection.weight.dtype))  # (B·N, K, d_llm)

        def per_image(maps):
            if maps is None:
                return None
            return tuple(None if m is None else m.unflatten(0, (batch, num_images)) for m in maps)  # (B, N, H, K, P)

        return SamVisualTokens(
            visual_tokens=tokens.unflatten(0, (batch, num_images)),
            query_states=query_states.unflatten(0, (batch, num_images)),
            patch_features=patch_features,
            guidance_weights=alpha,
            image_cross_attentions=per_image(image_attn),
            context_cross_attentions=per_image(context_attn),
            guided=guided,
        )

    def _patch_features(self, pixel_values, patch_features) -> torch.Tensor:
        if (pixel_values is None) == (patch_features is None):
            raise ValueError("Pass exactly one of pixel_values (B, N, 3, H, W) or patch_features (B, N, P, D).")
        if patch_features is not None:
            if patch_features.dim() != 4:
                raise ValueError(f"patch_features must be (B, N, P, D), got shape {tuple(patch_features.shape)}")
            return patch_features
        if pixel_values.dim() == 4:  # a single image per sample, as in plain InstructBLIP
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (B, N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        return self.encode_images(pixel_values)

    def extract_visual_tokens(
        self,
        qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_features: torch.FloatTensor | None = None,
        guidance: bool = True,
        output_attentions: bool = False,
    ) -> SamVisualTokens:
        """Visual tokens for N images per sample: SAM (`guidance=True`) or independent extraction."""
        features = self._patch_features(pixel_values, patch_features)
        mode = "sam" if guidance else "baseline"
        return self._extract(features, qformer_input_ids, qformer_attention_mask, (mode,), output_attentions)[mode]

    def extract_compare(
        self,
        qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_features: torch.FloatTensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[SamVisualTokens, SamVisualTokens]:
        """(SAM, baseline) tokens from one vision pass and the Q-Former layers the two modes share."""
        features = self._patch_features(pixel_values, patch_features)
        both = self._extract(features, qformer_input_ids, qformer_attention_mask, ("sam", "baseline"), output_attentions)
        return both["sam"], both["baseline"]

    # ------------------------------------------------------------------ language model

    def merge_visual_tokens(self, input_ids: torch.LongTensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings with the N·K image placeholders replaced by the visual tokens, in image order."""
        inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, seq, d_llm)
        placeholders = self.get_placeholder_mask(input_ids, inputs_embeds)  # (B, seq, 1)
        batch, num_images, query_length, width = visual_tokens.shape
        expected = num_images * query_length
        found = (input_ids == self.config.image_token_id).sum(dim=1)
        if not torch.all(found == expected):
            raise ValueError(
                f"The prompt holds {found.tolist()} image placeholder tokens per sample, but {num_images} images × "
                f"{query_length} query tokens = {expected} visual tokens were extracted; build inputs with SamProcessor."
            )
        flat_tokens = visual_tokens.reshape(batch, expected, width).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(placeholders, flat_tokens)

    def forward(
        self,
        qformer_input_ids: torch.LongTensor,
        input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        guidance: bool = True,
        visual: SamVisualTokens | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> SamOutput:
        """Logits (and the answer-only LM loss given `labels`, -100 on non-answer positions) for one mode."""
        if visual is None:
            visual = self.extract_visual_tokens(
                qformer_input_ids, qformer_attention_mask, pixel_values, patch_features, guidance, output_attentions
            )
        inputs_embeds = self.merge_visual_tokens(input_ids, visual.visual_tokens)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.use_decoder_only_language_model:
            outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
            loss = None
            if labels is not None:
                loss = self.loss_function(
                    logits=outputs.logits, labels=labels, vocab_size=self.config.text_config.vocab_size
                )
        else:
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                labels=labels,
                **kwargs,
            )
            loss = outputs.loss
        return SamOutput(loss=loss, logits=outputs.logits, visual=visual)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_features: torch.FloatTensor | None = None,
        guidance: bool = True,
        visual: SamVisualTokens | None = None,
        visual_tokens: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """transformers generation (greedy, sampling, beams, streamers) over SAM or baseline visual tokens:
        extracted here, or given as `visual` or as a (B, N, K, d_llm) `visual_tokens` tensor (e.g. SAM's and the
        baseline's stacked into one batch).

        Returns only the newly generated ids, (B·num_return_sequences, new_tokens), for both kinds of LLM.
        """
        if hasattr(self, "hf_device_map"):
            self._preprocess_accelerate()
        if visual_tokens is None:
            if visual is None:
                visual = self.extract_visual_tokens(
                    qformer_input_ids, qformer_attention_mask, pixel_values, patch_features, guidance
                )
            visual_tokens = visual.visual_tokens
        inputs_embeds = self.merge_visual_tokens(input_ids, visual_tokens)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if not self.language_model.config.is_encoder_decoder:
            inputs["input_ids"] = input_ids
        output_ids = self.language_model.generate(**inputs, **generate_kwargs)
        if self.language_model.config.is_encoder_decoder:
            return output_ids[:, 1:]  # drop the decoder start token
        prompt_length = input_ids.shape[1]
        if output_ids.shape[1] >= prompt_length and torch.equal(
            output_ids[:, :prompt_length], input_ids.repeat_interleave(output_ids.shape[0] // input_ids.shape[0], 0)
        ):
            return output_ids[:, prompt_length:]
        return output_ids


def split_rows(maps: list | None, start: int, stop: int | None) -> list | None:
    """Rows start:stop of each captured attention map (None entries stay None)."""
    return None if maps is None else [None if m is None else m[start:stop] for m in maps]


def repeat_rows(maps: list | None, repeats: int) -> list | None:
    return None if maps is None else [None if m is None else m.repeat_interleave(repeats, dim=0) for m in maps]


def copy_list(maps: list | None) -> list | None:
    return None if maps is None else list(maps)


__all__ = ["SamConfig", "SamForConditionalGeneration", "SamGuidance", "SamOutput", "SamVisualTokens"]
