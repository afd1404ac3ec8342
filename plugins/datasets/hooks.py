"""Registers the built-in datasets (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.datasets"


@hookimpl
def register_datasets() -> dict[str, ComponentRef]:
    return {
        "shapes": ComponentRef(
            f"{_P}.shapes:ShapesDataset", config=f"{_P}.shapes_config:ShapesConfig"
        ),
        "imagenet-folder": ComponentRef(
            f"{_P}.imagenet:ImageNetFolderDataset", config=f"{_P}.configs:ImageNetFolderConfig"
        ),
        "image-folder": ComponentRef(
            f"{_P}.folders:ImageFolderDataset", config=f"{_P}.configs:ImageFolderConfig"
        ),
        "quickdraw-emoji": ComponentRef(
            f"{_P}.quickdraw:QuickDrawEmojiDataset", config=f"{_P}.configs:QuickDrawEmojiConfig"
        ),
        # Prompt and caption datasets (text items for text encoders).
        "prompt-file": ComponentRef(
            f"{_P}.prompts:PromptFileDataset", config=f"{_P}.prompt_configs:PromptFileConfig"
        ),
        "coco-captions": ComponentRef(
            f"{_P}.prompts:COCOCaptionsDataset", config=f"{_P}.prompt_configs:COCOCaptionsConfig"
        ),
        "hf-text": ComponentRef(
            f"{_P}.prompts:HFTextDataset", config=f"{_P}.prompt_configs:HFTextConfig"
        ),
        "prompt-corpus": ComponentRef(
            f"{_P}.prompts:PromptCorpusDataset", config=f"{_P}.prompt_configs:PromptCorpusConfig"
        ),
        "image-captions": ComponentRef(
            f"{_P}.image_text:ImageCaptionsDataset",
            config=f"{_P}.image_text_config:ImageCaptionsConfig",
        ),
        "class-questions": ComponentRef(
            f"{_P}.image_text:ClassQuestionsDataset",
            config=f"{_P}.image_text_config:ClassQuestionsConfig",
        ),
    }
