"""The demo model's data: the stdlib corpus and its file split, the byte-level BPE tokenizer, FIM samples."""
from __future__ import annotations

import hashlib
import json
import random
import sysconfig
from pathlib import Path

# StarCoder's special tokens, ids 0-18 in this order
SPECIAL_TOKENS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
                  "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                  "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<empty_output>", "<commit_before>",
                  "<commit_msg>", "<commit_after>", "<reponame>"]
# the regression-test suite is most of the stdlib's bytes; library code is what completions should imitate
_SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files() -> list[tuple[str, str]]:
    """(path relative to the stdlib, text) of every library .py file, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append((rel.as_posix(), text))
    return out


def is_held_out(rel_path: str, percent: int = 5) -> bool:
    """Deterministic split by file: a hash of the relative path, independent of the file set."""
    return int(hashlib.sha1(rel_path.encode()).hexdigest(), 16) % 100 < percent


def split_corpus(percent: int = 5) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    files = stdlib_files()
    return ([f for f in files if not is_held_out(f[0], percent)], [f for f in files if is_held_out(f[0], percent)])


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path, model_max_length: int):
    """Byte-level BPE like StarCoder's (digits split one by one), saved so AutoTokenizer loads it offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, name
    eot = SPECIAL_TOKENS[0]
    hf = GPT2TokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot,
                           additional_special_tokens=SPECIAL_TOKENS[1:], add_prefix_space=False,
                           model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    # the files older readers (and TheBloke's repos) carry beside tokenizer.json
    tok.model.save(str(out_dir))
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "additional_special_tokens": SPECIAL_TOKENS[1:]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return hf


class FimSampler:
    """Training sequences as StarCoder builds them: document windows, half turned into PSM or SPM."""

    def __init__(self, tokenizer, docs: list[list[int]], seqlen: int, fim_rate: float = 0.5,
                 spm_rate: float = 0.5, seed: int = 0) -> None:
        self.tok = tokenizer
        self.docs = [d for d in docs if d]
        self.weights = [len(d) for d in self.docs]
        self.seqlen = seqlen
        self.fim_rate, self.spm_rate = fim_rate, spm_rate
        self.rng = random.Random(seed)
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS[:4]}
        self.eot, self.prefix, self.middle, self.suffix = (ids["<|endoftext|>"], ids["<fim_prefix>"],
                                                           ids["<fim_middle>"], ids["<fim_suffix>"])

    def _piece(self) -> list[int]:
        doc = self.rng.choices(self.docs, weights=self.weights)[0]
        start = self.rng.randrange(max(1, len(doc) - self.seqlen // 2)) if len(doc) > self.seqlen else 0
        window = doc[start:start + self.seqlen]
        at_end = start + len(window) >= len(doc)
        if self.rng.random() >= self.fim_rate:
            return window + [self.eot] if at_end else window
        text = self.tok.decode(window)
        a, b = sorted(self.rng.randrange(len(text) + 1) for _ in range(2))
        pre, mid, suf = (self.tok.encode(s) for s in (text[:a], text[a:b], text[b:]))
        if self.rng.random() < self.spm_rate:
            return [self.prefix, self.suffix] + suf + [self.middle] + pre + mid + [self.eot]
        return [self.prefix] + pre + [self.suffix] + suf + [self.middle] + mid + [self.eot]

    def sequence(self) -> list[int]:
        """seqlen + 1 tokens (inputs and shifted targets), pieces packed back to back."""
        out: list[int] = []
        while len(out) < self.seqlen + 1:
            out += self._piece()
        return out[:self.seqlen + 1]


def eval_windows(tokenizer, texts: list[str], seqlen: int, max_windows: int) -> list[list[int]]:
    """Held-out text as plain (non-FIM) windows: files joined by <|endoftext|>, cut every seqlen tokens."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text) + [tokenizer.eos_token_id]
        if len(stream) >= seqlen * max_windows:
            break
    return [stream[i:i + seqlen] for i in range(0, len(stream) - seqlen + 1, seqlen)][:max_windows]
