"""Every prompt template VLM2Rec feeds to a VLM, in one place.

A prompt is a *body* (what is being embedded and the closing instruction) wrapped in a family's
chat turn. Image positions inside a body are written with the family's image slot
(``IMAGE_SLOT``); the embedder later expands each slot into the image's placeholder tokens.
Every body ends with a one-word-summary instruction and the wrapper ends where the assistant's
answer would start, so the last token's hidden state is the embedding (E5-V / VLM2Vec style).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Closing instructions (pooling happens right after the assistant turn opens).
ITEM_INSTRUCTION = "Summarize the above item in one word:"
USER_INSTRUCTION = "Summarize the above user's preferences in one word:"

#: Item prompts (external fusion: one per modality).
ITEM_TEXT = "Item: {text}\n" + ITEM_INSTRUCTION
ITEM_IMAGE = "Item image: {image}\n" + ITEM_INSTRUCTION

#: User prompts (external fusion): the last L items of the history, oldest first.
USER_TEXT = "A user interacted with these items, oldest first:\n{lines}\n" + USER_INSTRUCTION
USER_TEXT_LINE = "{index}. {text}"
USER_IMAGE = (
    "A user interacted with the items in these images, oldest first:\n{lines}\n" + USER_INSTRUCTION
)
USER_IMAGE_LINE = "{index}. {image}"

#: Internal fusion (ablation): both modalities in one prompt; absent parts are left out.
ITEM_JOINT = "{parts}\n" + ITEM_INSTRUCTION
ITEM_JOINT_IMAGE_PART = "Item image: {image}"
ITEM_JOINT_TEXT_PART = "Item: {text}"
USER_JOINT = "A user interacted with these items, oldest first:\n{lines}\n" + USER_INSTRUCTION
USER_JOINT_LINE = "{index}. {parts}"

#: Chat wrappers per prompt family ("qwen": Qwen2-VL / Qwen2.5-VL; "idefics3": SmolVLM /
#: Idefics3; "llava-qwen": FastVLM, LLaVA's image token in Qwen2's chat turn); ``{body}`` is
#: one of the bodies above.
CHAT: dict[str, str] = {
    "qwen": "<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|im_start|>User:{body}<end_of_utterance>\nAssistant:",
    "llava-qwen": "<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n",
}

#: How one image is written inside a body, per prompt family (expanded later by the embedder).
IMAGE_SLOT: dict[str, str] = {
    "qwen": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "llava-qwen": "<image>",
}


def wrap(family: str, body: str) -> str:
    """Put a prompt body into the family's chat turn."""
    return CHAT[family].format(body=body)


def item_text(text: str) -> str:
    """Body for an item's text branch."""
    return ITEM_TEXT.format(text=text)


def item_image(slot: str) -> str:
    """Body for an item's image branch (``slot``: the family's image slot)."""
    return ITEM_IMAGE.format(image=slot)


def user_text(texts: Sequence[str]) -> str:
    """Body for a user's text branch: the history items' texts in order (items without text
    are left out by the caller)."""
    lines = [USER_TEXT_LINE.format(index=k + 1, text=t) for k, t in enumerate(texts)]
    return USER_TEXT.format(lines="\n".join(lines))


def user_image(n_images: int, slot: str) -> str:
    """Body for a user's image branch holding ``n_images`` images in order."""
    lines = [USER_IMAGE_LINE.format(index=k + 1, image=slot) for k in range(n_images)]
    return USER_IMAGE.format(lines="\n".join(lines))


def _joint_parts(
    text: str | None, has_image: bool, slot: str, image_part: str, text_part: str
) -> str:
    parts = []
    if has_image:
        parts.append(image_part.format(image=slot))
    if text:
        parts.append(text_part.format(text=text))
    return " ".join(parts)


def item_joint(text: str | None, has_image: bool, slot: str) -> str:
    """Body for an item under internal fusion (only the present modalities appear)."""
    parts = _joint_parts(text, has_image, slot, ITEM_JOINT_IMAGE_PART, ITEM_JOINT_TEXT_PART)
    return ITEM_JOINT.format(parts=parts)


def user_joint(entries: Sequence[tuple[str | None, bool]], slot: str) -> str:
    """Body for a user under internal fusion; ``entries``: (text or None, has_image) per item."""
    lines = [
        USER_JOINT_LINE.format(index=k + 1, parts=_joint_parts(t, img, slot, "{image}", "{text}"))
        for k, (t, img) in enumerate(entries)
    ]
    return USER_JOINT.format(lines="\n".join(lines))
