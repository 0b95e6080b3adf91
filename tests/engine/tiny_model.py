"""Builds a tiny Llama-shaped model offline, for running the real vLLM engine on a CPU in tests.

Random weights from a fixed seed (filled here parameter by parameter, so they do not depend on how
a ``transformers`` release initializes a model) and a byte-level BPE tokenizer trained on IIR's
own source files, with ChatML special tokens and a Jinja chat template. The result loads in vLLM
and in ``transformers`` like any hub model folder (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``), greedy output is the same on every build of the
same sources, and greedy answers never end early (no special token wins an argmax).

The training text is reduced to ASCII and the tokenizer's alphabet is only the bytes it saw, so
every token decodes to whole characters: text detokenized piece by piece (vLLM's stream) equals
the text of all ids decoded at once. Characters outside that alphabet are dropped on encoding.

Usage: ``python -m tests.engine.tiny_model OUT_DIR [--context-length N] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen-style models ship it; a system message anywhere but first is an error (vLLM's
# server and IIR answer 400 for a template that raises).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System message must be at the beginning.') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus() -> list[str]:
    """IIR's Python sources, in a stable order, reduced to ASCII."""
    files = sorted((REPO / "iir").rglob("*.py"))
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    return [t.encode("ascii", "ignore").decode() for t in texts if t.strip()]


def build_tokenizer(out: Path) -> int:
    """Trains the BPE, saves it as a ``PreTrainedTokenizerFast``; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def build_model(out: Path, context_length: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {t: SPECIAL_TOKENS.index(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs at least 32
        max_position_embeddings=context_length,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        torch_dtype="float32",
    )
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        # The special tokens' logits are always 0 while about half of the others are above 0,
        # so greedy decoding never picks one: every greedy answer runs to max_tokens, whatever
        # the tokenizer learnt from today's sources (sampling still may end on </s>).
        model.lm_head.weight[: len(SPECIAL_TOKENS)] = 0.0
    model.save_pretrained(out, safe_serialization=True)


def build(out: str | Path, context_length: int = 256, seed: int = 0) -> Path:
    """Writes the model folder ``out`` (created if missing) and returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = build_tokenizer(out)
    if size > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {size} tokens, more than the model's {VOCAB_SIZE}")
    build_model(out, context_length, seed)
    # Only the token ids: sampling defaults stay vLLM's and the request's.
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out, args.context_length, args.seed))


if __name__ == "__main__":
    main()
