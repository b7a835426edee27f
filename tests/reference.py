"""A straightforward per-image SAM, written after the authors' loop (tests only).

For each image i it runs the Q-Former layer by layer on two copies of x0: the W-former copy over the context
features, the Q-Former copy over F_i; at the exchange layer it adds the two linears' outputs as the authors do.
"""

import torch
from transformers.masking_utils import create_bidirectional_mask


def reference_visual_tokens(model, patch_features, qformer_input_ids, qformer_attention_mask, guided=True):
    config = model.config
    batch, num_images = patch_features.shape[:2]
    query_length = config.num_query_tokens
    layers = model.qformer.encoder.layer
    outputs = patch_features.new_zeros(batch, num_images, query_length, model.language_projection.out_features)
    for b in range(batch):
        features = patch_features[b]  # (N, P, D)
        scores = model.guidance.patch_scorer(features).squeeze(-1)  # (N, P)
        for i in range(num_images):
            queries = model.query_tokens
            x0 = model.qformer.embeddings(input_ids=qformer_input_ids[b : b + 1], query_embeds=queries)
            mask_2d = torch.cat([qformer_attention_mask.new_ones(1, query_length), qformer_attention_mask[b : b + 1]], 1)
            mask = create_bidirectional_mask(config=model.qformer.config, inputs_embeds=x0, attention_mask=mask_2d)
            if config.context == "all":
                weights = scores.softmax(dim=0)  # over all images
                context = (weights[:, :, None] * features).sum(0, keepdim=True)
            else:
                others = [j for j in range(num_images) if j != i]
                weights = scores[others].softmax(dim=0)
                context = (weights[:, :, None] * features[others]).sum(0, keepdim=True)
            hidden, hidden_w = x0, x0.clone()
            use_guidance = guided and num_images > 1
            for index, layer in enumerate(layers):
                if use_guidance and index <= config.exchange_layer:
                    if index == config.exchange_layer:
                        hidden_w = hidden_w + model.guidance.image_to_context(hidden)
                    hidden_w = layer(hidden_w, mask, context, query_length=query_length)
                    if index == config.exchange_layer:
                        hidden = hidden + model.guidance.context_to_image(hidden_w)
                hidden = layer(hidden, mask, features[i : i + 1], query_length=query_length)
            outputs[b, i] = model.language_projection(hidden[0, :query_length])
    return outputs
