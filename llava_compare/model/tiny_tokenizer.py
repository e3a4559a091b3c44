"""A small byte-level BPE tokenizer built locally, so tests and the demo never download one.

Trained (deterministically) on a built-in corpus of comparison-task words; byte-level fallback
means any text still encodes. Real runs use the LLM's own tokenizer instead.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..data.sample import IMAGE_PLACEHOLDER

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

# Words the synthetic tasks, the vicuna template and the markers use, so each is ~one token.
_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives
helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT: SYSTEM:
Image 1: Image 2: Image 3: Image 4: The first image: The second image: The third image:
Which image is brighter? Which image is darker? Which image is blurrier? Which image is sharper?
Which image is the sharpest? Which image has more objects? Which one has fewer objects?
What changed between the two images? Answer with Image 1 or Image 2. Answer with the image number.
Image 1 Image 2 Image 3 Image 4 Compare the images. Look at both pictures. Describe the image briefly.
The red circle turned blue. The green square became a triangle. The blue circle moved to the left.
The yellow triangle moved to the right. The object moved up. The object moved down. It changed colour.
A bright image with 3 red circles on a striped background. It is slightly blurred. It is sharp.
A dark image with 1 green square on a noisy background. It is very blurred. There are 2 objects.
red green blue yellow orange purple white black cyan magenta circle square triangle star
one two three four five 0 1 2 3 4 5 6 7 8 9 left right top bottom up down moved became turned
bright dark brighter darker blurry blurrier sharp sharper sharpest more fewer objects object shapes
background striped noisy plain textured image images picture pictures first second third fourth
yes no the a an is are was were of in on with and or to it this that which what how many
"""


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``<image>`` as a special token. Same output every call."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, IMAGE_PLACEHOLDER]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
        padding_side="right", model_max_length=4096,
    )
