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
from transformers import GenerationMixin, InstructBlipForConditionalGeneration
from transformers import initialization as init
from transformers.generation.utils import GenerateOutput
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.instructblip.modeling_instructblip import (
    BaseModelOutputWithVisionQformerOutputs,
    InstructBlipForConditionalGenerationModelOutput,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, torch_compilable_check

from .configuration import SamConfig


@dataclass
class SamVisualTokens:
    """What the guided (or baseline) extraction produces for a batch of image sets.

    visual_tokens: (B, N, K, d_llm) projected Q-Former queries, fed to the LLM in image order.
    query_states: (B, N, K, d) Q-Former query outputs before the projection.
    qformer_states: (B, N, S, d) the Q-Former's (stream A's) final states over [queries; instruction];
        query_states are its first K positions.
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
    qformer_states: torch.FloatTensor
    patch_features: torch.FloatTensor
    guidance_weights: torch.FloatTensor | None = None
    image_cross_attentions: tuple[torch.FloatTensor | None, ...] | None = None
    context_cross_attentions: tuple[torch.FloatTensor | None, ...] | None = None
    guided: bool = False


@dataclass
class SamImageFeatures(BaseModelOutputWithVisionQformerOutputs):
    """`get_image_features` for image sets, one row per sample as in InstructBLIP: last_hidden_state (B, N·P, D)
    the patch features of the set's images in order; pooler_output (B, N·K, d_llm) the visual tokens in the order
    the LLM reads them; hidden_states / attentions (of the vision encoder, on request), vision_outputs and
    qformer_outputs one row per image, (B·N, …). With one image per sample: InstructBLIP's shapes. Plus `visual`,
    SAM's extraction."""

    visual: SamVisualTokens | None = None


@dataclass
class SamOutput(InstructBlipForConditionalGenerationModelOutput):
    """InstructBLIP's output (loss, logits, vision_outputs, qformer_outputs, language_model_outputs) for one mode,
    plus `visual`: SAM's extraction that fed the language model.

    vision_outputs and qformer_outputs hold one row per image, (B·N, …) in sample-major, image order (for N = 1
    exactly InstructBLIP's); vision_outputs is None when the extraction was passed in (`visual`, `patch_features`).
    """

    visual: SamVisualTokens | None = None


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


class SamForConditionalGeneration(InstructBlipForConditionalGeneration, GenerationMixin):
    """InstructBLIP with SAM's bidirectional semantic guidance; `guidance=False` is the baseline.

    The parent's modules (vision_model, query_tokens, qformer, language_projection, language_model) are used
    unchanged; SAM only adds `self.guidance` and drives the Q-Former layer by layer. `forward` and `generate` keep
    InstructBLIP's signatures, outputs and conventions; `pixel_values` may hold N images per sample, (B, N, 3, H, W),
    and SAM's own arguments (`guidance`, `visual`, `visual_tokens`, `patch_features`) are keyword-only.
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

    def _vision_outputs(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Vision encoder + final layer norm over all B·N images in one call: (B, N, 3, H, W), or (B, 3, H, W) for
        one image per sample as in plain InstructBLIP → last_hidden_state (B·N, P, D)."""
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (B, N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        flat = pixel_values.flatten(0, 1).to(self.vision_model.embeddings.patch_embedding.weight.dtype)
        return self.vision_model(pixel_values=flat, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)

    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Patch features F of every image: (B, N, 3, H, W) → (B, N, P, D)."""
        features = self._vision_outputs(pixel_values, interpolate_pos_encoding).last_hidden_state  # (B·N, P, D)
        return features.unflatten(0, (pixel_values.shape[0], -1))

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
        if qformer_input_ids is None:
            raise ValueError("qformer_input_ids (the instruction for the Q-Former) are needed to extract visual tokens")
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
            qformer_states=hidden.unflatten(0, (batch, num_images)),
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

    # ------------------------------------------------------------------ InstructBLIP's interface

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        *,
        patch_features: torch.FloatTensor | None = None,
        guidance: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | SamImageFeatures:
        """InstructBLIP's image features for N images per sample, (B, N, 3, H, W) or (B, 3, H, W), with SAM's
        guidance (`guidance=False`: the baseline); from `patch_features` (B, N, P, D) instead of pixels if given.
        Other keyword arguments (`output_hidden_states`, `output_attentions`) go to the vision encoder, as in
        InstructBLIP."""
        vision_outputs = None
        if pixel_values is not None and patch_features is None:
            vision_outputs = self._vision_outputs(pixel_values, interpolate_pos_encoding, **kwargs)
            patch_features = vision_outputs.last_hidden_state.unflatten(0, (pixel_values.shape[0], -1))  # (B, N, P, D)
            pixel_values = None
        visual = self.extract_visual_tokens(
            qformer_input_ids, qformer_attention_mask, pixel_values, patch_features, guidance
        )
        return self._image_features(visual, vision_outputs)

    def _image_features(
        self, visual: SamVisualTokens, vision_outputs: BaseModelOutputWithPooling | None = None
    ) -> SamImageFeatures:
        """InstructBLIP's image-feature output built from SAM's extraction (and the vision encoder's, if it ran)."""
        qformer_states = visual.qformer_states.flatten(0, 1)  # (B·N, S, d)
        return SamImageFeatures(
            last_hidden_state=visual.patch_features.flatten(1, 2),  # (B, N·P, D)
            pooler_output=visual.visual_tokens.flatten(1, 2),  # (B, N·K, d_llm)
            hidden_states=getattr(vision_outputs, "hidden_states", None),
            attentions=getattr(vision_outputs, "attentions", None),
            vision_outputs=vision_outputs,
            qformer_outputs=BaseModelOutputWithPoolingAndCrossAttentions(
                last_hidden_state=qformer_states, pooler_output=qformer_states[:, 0, :]
            ),
            visual=visual,
        )

    def merge_visual_tokens(
        self, input_ids: torch.LongTensor | None, visual_tokens: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LLM input embeddings with the image placeholders replaced by the visual tokens, (B, N, K, d_llm) or
        (B, N·K, d_llm), in image order. The placeholders are found in `input_ids`, else in `inputs_embeds`."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, seq, d_llm)
        placeholders = self.get_placeholder_mask(input_ids, inputs_embeds)  # (B, seq, 1)
        flat_tokens = visual_tokens.flatten(1, -2)  # (B, N·K, d_llm)
        expected = flat_tokens.shape[1]
        found = placeholders.sum(dim=(1, 2))  # (B,)
        torch_compilable_check(  # a compiler hint under torch.compile, a clear error otherwise
            found == expected,
            lambda: f"The prompt holds {found.tolist()} image placeholder tokens per sample, but the visual tokens "
            f"{tuple(visual_tokens.shape)} are {expected} per sample (N images × K queries); "
            "build inputs with SamProcessor.",
        )
        return inputs_embeds.masked_scatter(placeholders, flat_tokens.to(inputs_embeds.device, inputs_embeds.dtype))

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        *,
        patch_features: torch.FloatTensor | None = None,
        guidance: bool = True,
        visual: SamVisualTokens | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | SamOutput:
        """InstructBLIP's forward over N images per sample: logits, and the LM loss given `labels` (-100 on
        non-answer positions; `num_items_in_batch` / `shift_labels` reach the loss as in the parent).

        The visual tokens come from `get_image_features` (SAM's extraction; `guidance=False`: the baseline) of
        `pixel_values` or `patch_features`, or precomputed: SAM's `visual`, or `mm_encoder_outputs={"image": ...}`
        as in the parent. Other keyword arguments (`output_attentions`, `output_hidden_states`, …) go to the
        language model; its outputs are `language_model_outputs`, as in the parent.
        """
        image_features = (mm_encoder_outputs or {}).get("image")
        if image_features is None:
            if visual is not None:
                image_features = self._image_features(visual)
            else:
                image_features = self.get_image_features(
                    pixel_values, qformer_input_ids, qformer_attention_mask, interpolate_pos_encoding,
                    patch_features=patch_features, guidance=guidance, return_dict=True,
                )
        elif pixel_values is not None or visual is not None:
            raise ValueError("Pass the images once: pixel_values, visual or mm_encoder_outputs.")

        inputs_embeds = self.merge_visual_tokens(input_ids, image_features.pooler_output, inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)

        if self.config.use_decoder_only_language_model:
            outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
            logits = outputs[0]
            loss = None
            if labels is not None:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )
        else:
            kwargs["return_dict"] = True
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                labels=labels,
                **kwargs,
            )
            loss, logits = outputs.loss, outputs.logits

        return SamOutput(
            loss=loss,
            logits=logits,
            vision_outputs=image_features.vision_outputs,
            qformer_outputs=image_features.qformer_outputs,
            language_model_outputs=outputs,
            visual=getattr(image_features, "visual", None),
        )

    def default_prompt(self, visual_tokens: torch.Tensor) -> torch.LongTensor:
        """InstructBLIP's prompt when none is given: the image placeholders (N·K here), then BOS; (B, N·K + 1)."""
        batch, placeholders = visual_tokens.flatten(1, -2).shape[:2]
        start = [self.config.image_token_index] * placeholders + [self.config.text_config.bos_token_id]
        return torch.tensor([start], dtype=torch.long, device=visual_tokens.device).repeat(batch, 1)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        interpolate_pos_encoding: bool = False,
        *,
        patch_features: torch.FloatTensor | None = None,
        guidance: bool = True,
        visual: SamVisualTokens | None = None,
        visual_tokens: torch.Tensor | None = None,
        new_tokens_only: bool = False,
        **generate_kwargs,
    ) -> torch.LongTensor | GenerateOutput:
        """transformers generation (greedy, sampling, beams, streamers, `return_dict_in_generate`) over SAM or
        baseline visual tokens: extracted here, or given as `visual` or as a (B, N, K, d_llm) `visual_tokens`
        tensor (e.g. SAM's and the baseline's stacked into one batch). Without `input_ids` / `inputs_embeds` the
        prompt is InstructBLIP's default (the image placeholders, then BOS).

        Returns what InstructBLIP returns: the language model's `generate` output, i.e. prompt + new ids for a
        decoder-only LLM (new ids only when the prompt came as `inputs_embeds` alone), the decoder start token +
        new ids for an encoder-decoder one. `new_tokens_only=True` keeps only the new ids, (B·num_return_sequences,
        new_tokens), in the tensor or in the output's `sequences`.
        """
        if hasattr(self, "hf_device_map"):
            self._preprocess_accelerate()
        if visual_tokens is None:
            if visual is None:
                visual = self.get_image_features(
                    pixel_values, qformer_input_ids, qformer_attention_mask, interpolate_pos_encoding,
                    patch_features=patch_features, guidance=guidance, return_dict=True,
                ).visual
            visual_tokens = visual.visual_tokens
        if input_ids is None and inputs_embeds is None:
            input_ids = self.default_prompt(visual_tokens)
        inputs_embeds = self.merge_visual_tokens(input_ids, visual_tokens, inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        encoder_decoder = self.language_model.config.is_encoder_decoder
        if not encoder_decoder and input_ids is not None:
            inputs["input_ids"] = input_ids
        outputs = self.language_model.generate(**inputs, **generate_kwargs)
        if not new_tokens_only:
            return outputs
        if encoder_decoder:  # the decoder's start (or given decoder_input_ids) come first
            start = generate_kwargs.get("decoder_input_ids")
            prompt_length = 1 if start is None else start.shape[1]
        else:  # prompt ids come first; the output of an embeds-only prompt holds new ids only
            prompt_length = 0 if input_ids is None else input_ids.shape[1]
        if isinstance(outputs, torch.Tensor):
            return outputs[:, prompt_length:]
        outputs.sequences = outputs.sequences[:, prompt_length:]
        return outputs


def split_rows(maps: list | None, start: int, stop: int | None) -> list | None:
    """Rows start:stop of each captured attention map (None entries stay None)."""
    return None if maps is None else [None if m is None else m[start:stop] for m in maps]


def repeat_rows(maps: list | None, repeats: int) -> list | None:
    return None if maps is None else [None if m is None else m.repeat_interleave(repeats, dim=0) for m in maps]


def copy_list(maps: list | None) -> list | None:
    return None if maps is None else list(maps)


__all__ = [
    "SamConfig", "SamForConditionalGeneration", "SamGuidance", "SamImageFeatures", "SamOutput", "SamVisualTokens"
]
