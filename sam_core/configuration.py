# Copyright 2026 The SAM studio authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""SAM configuration: transformers' InstructBLIP config plus the guidance fields (DESIGN.md §1)."""

from transformers import InstructBlipConfig

CONTEXT_MODES = ("all", "others")


class SamConfig(InstructBlipConfig):
    r"""
    context (`str`, defaults to `"all"`):
        How the context image of image i is pooled. `"all"` (the authors' code): one context image,
        a per-patch softmax over all N images, shared by every image. `"others"` (the paper's text):
        the context of image i pools the other N-1 images only.
    exchange_layer (`int`, *optional*):
        Q-Former layer at which the two streams exchange information. Defaults to the last layer,
        as in the authors' code.
    """

    model_type = "sam_instructblip"

    context: str = "all"
    exchange_layer: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        num_layers = self.qformer_config.num_hidden_layers
        if self.exchange_layer is None:
            self.exchange_layer = num_layers - 1
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if not 0 <= self.exchange_layer < num_layers:
            raise ValueError(
                f"exchange_layer must lie in [0, {num_layers - 1}] for a {num_layers}-layer Q-Former, "
                f"got {self.exchange_layer}"
            )
