"""Build the tiny local model directory the simulated stack needs.

No model hub is reachable here, and the frontend and mocker only need a tokenizer, a chat
template and a minimal ``config.json``: we train a small byte-level BPE on text generated
locally and write those three files. Deterministic: the same output on every machine.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

MODEL_NAME = "akr-tiny"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML-style template: the stock frontend renders it with minijinja.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "agent tool call result search file read write the a of to and in is for with on that "
    "cache prefix worker router token latency request response system user assistant plan "
    "step answer question context memory data table query error retry json value key list "
    "python function return import class def async await yield model serve block hash"
).split()


def _corpus(lines: int, seed: int = 7) -> list[str]:
    """Pseudo-English lines plus digits and punctuation, so every byte pattern is seen."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 25))]
        out.append(" ".join(words) + f" {i} {rng.random():.4f}, ({i % 97}) {{x: [1, 2]}}.")
    return out


def build(out_dir: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and config.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(4000), trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    eos_id = tokenizer.token_to_id("<|im_end|>")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": 131072,
                "chat_template": CHAT_TEMPLATE,
                "add_bos_token": False,
            },
            indent=2,
        )
    )
    (out_dir / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": vocab,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "max_position_embeddings": 131072,
                "eos_token_id": eos_id,
                "bos_token_id": eos_id,
                "torch_dtype": "float16",
            },
            indent=2,
        )
    )
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path(".model") / MODEL_NAME)
    args = parser.parse_args()
    print(build(args.out_dir))


if __name__ == "__main__":
    main()
