"""The tiny model and the reversal task shipped for the quickstart and the tests.

Everything here is built offline and deterministically; `python tests/assets.py` rewrites
`recipes/assets/` and the suite checks that the shipped files equal what this builds.

- tokenizer: byte-level (every byte one token, no merges) plus chat special tokens, with a
  chat template that marks assistant turns with {% generation %} for assistant-only loss;
- model: a 3-layer Llama config small enough to train in seconds on a CPU;
- data: reverse a short lowercase string, as prompt/completion pairs, and as preference pairs: the answer as
  asked chosen over the same answer in capitals (recipes/reward_lora.json), and the right reversal chosen over a
  near miss (the RLHF chain's reward model, recipes/rlhf/);
- data for the real-model quickstart (recipes/quickstart_chat.json): conversations asking for a person's
  name, age and city from a sentence, answered with one JSON object.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "recipes" / "assets"
SPECIAL = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}{{ message['content'] + '<|end|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
VOCAB_SIZE = 256 + len(SPECIAL)


def model_config() -> dict:
    """A Llama small enough to train in seconds on two CPU cores (~0.66M parameters)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pad_token_id": 256,
        "eos_token_id": 257,
        "bos_token_id": None,
        "use_cache": True,
    }


def build_tokenizer():
    """A byte-level tokenizer: each byte is one token, so string reversal is learnable per character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE, model_max_length=256,
    )


def reverse_rows(count: int, seed: int, min_len: int = 3, max_len: int = 8) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(min_len, max_len)))
        rows.append({"prompt": f"reverse {word} =", "completion": f" {word[::-1]}"})
    return rows


def reverse_preference_rows(count: int, seed: int) -> list[dict]:
    """The reversal task as preference pairs for a reward model: a style preference a model built from scratch learns
    in a few hundred steps on a CPU: the answer as asked (lowercase) is chosen over the same answer in capitals.
    (Telling the right reversal from the word copied unreversed took a full fine-tuning of the tiny model ~150 steps
    to start to learn, and LoRA on its random base had not started after 50: too slow for a CPU recipe.)"""
    return [{"prompt": row["prompt"], "chosen": row["completion"], "rejected": row["completion"].upper()}
            for row in reverse_rows(count, seed)]


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer of the kind a half-trained reverser writes: the word copied unreversed, the reversal with one
    letter replaced, dropped or doubled, two neighbours swapped, or cut short; and the degenerate answers a policy
    drifts to when a reward model has never seen them (measured on the RLHF chain: "tttt" scored above every right
    reversal): one letter repeated, random letters."""
    word = answer.strip()
    while True:
        at = rng.randrange(len(word))
        wrong = {"unreversed": lambda: word[::-1],
                 "replace": lambda: word[:at] + rng.choice(LETTERS) + word[at + 1:],
                 "swap": lambda: word[:at] + word[at + 1:at + 2] + word[at:at + 1] + word[at + 2:],
                 "drop": lambda: word[:at] + word[at + 1:],
                 "double": lambda: word[:at] + word[at] + word[at:],
                 "cut": lambda: word[:max(at, 1)],
                 "repeated": lambda: rng.choice(LETTERS + word) * rng.randint(2, 9),
                 "random": lambda: "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 9)))}[
            rng.choice(["unreversed", "replace", "swap", "drop", "double", "cut", "repeated", "random"])]()
        if wrong != word:
            return " " + wrong


def reverse_near_miss_rows(count: int, seed: int) -> list[dict]:
    """The reversal task as preference pairs for the RLHF chain's reward model: the right reversal chosen over a near
    miss, so the reward scores what the policy gets wrong."""
    rng = random.Random(seed + 100)
    return [{"prompt": row["prompt"], "chosen": row["completion"], "rejected": near_miss(row["completion"], rng)}
            for row in reverse_rows(count, seed)]


NAMES = ["Alice", "Bruno", "Chen", "Dalia", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Mateo", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Victor", "Wen", "Ximena",
         "Yusuf", "Zoe", "Amara", "Bjorn", "Carmen", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Dublin", "Austin", "Porto", "Kyiv",
          "Accra", "Seoul", "Perth", "Bogota", "Munich", "Tunis", "Dakar", "Riga", "Denver", "Lyon", "Pune", "Cusco"]
SENTENCES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}: {age}, based in {city}.",
    "{city} has been home to {name} since turning {age}.",
    "At {age}, {name} moved to {city} for work.",
    "{name}, aged {age}, was born and raised in {city}.",
    "The new librarian in {city} is {name}, who is {age}.",
    "Our guide in {city} was {name}, a {age}-year-old local.",
    "{name} celebrated a {age}th birthday last week in {city}.",
]
ASK = "Extract the person's name, age and city as a JSON object: "


def record_rows(count: int, seed: int) -> list[dict]:
    """Sentences about a person, each asked for as JSON: a format a small instruct model learns in minutes."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(19, 88)
        sentence = rng.choice(SENTENCES).format(name=name, age=age, city=city)
        answer = json.dumps({"name": name, "age": age, "city": city})
        rows.append({"messages": [{"role": "user", "content": ASK + sentence},
                                  {"role": "assistant", "content": answer}]})
    return rows


def write_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model_config(), indent=2) + "\n")
    build_tokenizer().save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_all(root: Path = ASSETS) -> None:
    write_model_dir(root / "tiny-llama")
    train = reverse_rows(4000, seed=1)
    seen = {row["prompt"] for row in train}
    held_out = [row for row in reverse_rows(220, seed=2) if row["prompt"] not in seen][:200]  # no leakage
    write_jsonl(root / "reverse" / "train.jsonl", train)
    write_jsonl(root / "reverse" / "eval.jsonl", held_out)
    records = record_rows(400, seed=3)
    seen = {row["messages"][0]["content"] for row in records}
    held_out = [row for row in record_rows(60, seed=4) if row["messages"][0]["content"] not in seen][:40]
    write_jsonl(root / "json_records" / "train.jsonl", records)
    write_jsonl(root / "json_records" / "eval.jsonl", held_out)
    pairs = reverse_preference_rows(1200, seed=5)
    seen = {row["prompt"] for row in pairs}
    held_out = [row for row in reverse_preference_rows(240, seed=6) if row["prompt"] not in seen][:200]
    write_jsonl(root / "reverse_preference" / "train.jsonl", pairs)
    write_jsonl(root / "reverse_preference" / "eval.jsonl", held_out)
    pairs = reverse_near_miss_rows(2000, seed=7)
    seen = {row["prompt"] for row in pairs}
    held_out = [row for row in reverse_near_miss_rows(240, seed=8) if row["prompt"] not in seen][:200]
    write_jsonl(root / "reverse_near_miss" / "train.jsonl", pairs)
    write_jsonl(root / "reverse_near_miss" / "eval.jsonl", held_out)


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS)
