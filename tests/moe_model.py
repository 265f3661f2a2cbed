"""Write a tiny random-weights Mixture-of-Experts GGUF model for tests.

``write_moe_gguf(path)`` produces a ``qwen3moe`` model (~1.2 MB with the
defaults, written in a few milliseconds) that llama.cpp loads and generates
from on the CPU. The expert weights are the merged 3-D tensors
``blk.N.ffn_{gate,up,down}_exps.weight``, so ``--n-cpu-moe N``, ``--cpu-moe``
and ``-ot 'blk\\.N\\.ffn_(up|down|gate)_exps=...'`` overrides apply to them.

Only ``numpy`` and ``gguf`` (GGUFWriter) are needed; the tokenizer is built
here (no downloaded vocab), as a SentencePiece-style ("llama") vocabulary:

* ``<unk>`` ``<s>`` ``</s>`` plus ChatML's ``<|im_start|>`` ``<|im_end|>``;
* the 256 byte tokens ``<0x00>``..``<0xFF>`` (type BYTE): any UTF-8 text
  that has no matching piece falls back to bytes, so Japanese etc. round-trip;
* ``▁`` (the escaped space), printable ASCII characters, and a few hundred
  common English pieces and Japanese characters with prefix chains so the SPM
  merge loop can reach them.

The output projection rows of the control, unknown and byte tokens are zero,
so greedy decoding never picks EOS (generation runs for exactly the requested
token count, which suits throughput sweeps) and emits only printable text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

__all__ = ["CHATML_TEMPLATE", "build_vocab", "write_moe_gguf"]

ARCH = "qwen3moe"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIALS: list[tuple[str, TokenType]] = [
    ("<unk>", TokenType.UNKNOWN),  # id 0: llama.cpp's SPM default unk id
    ("<s>", TokenType.CONTROL),  # id 1: default bos id
    ("</s>", TokenType.CONTROL),  # id 2: default eos id
    ("<|im_start|>", TokenType.CONTROL),  # ChatML; parsed as one token with special=True
    ("<|im_end|>", TokenType.CONTROL),  # ChatML end of turn (llama.cpp treats it as EOG)
]
BOS_ID, EOS_ID, IM_END_ID = 1, 2, 4

# Whitespace-separated seed pieces for the vocabulary (see build_vocab).
_WORDS_TEXT = (
    "the of and to in a is that for it as was with be by on not he I this are or his "
    "from at which but have an they you were her she there one all we their can has "
    "more will would about if no when what so up out other into time only new some "
    "could these two may first then do any like my now over such our man me even most "
    "made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never "
    "day same another know while last might us great old year off come since against "
    "go came right used take three model token test load speed layer expert memory "
    "hello world Hello The This It In"
)
_SUFFIXES_TEXT = "ing ed er ly es s tion ment ness able ous ive al ic"
_JAPANESE_TEXT = (
    "の に は を た が で て と し れ さ ある いる も な こ 日 本 語 日本 日本語 "
    "こんにちは 世界 です ます 、 。 私 東京 テスト"
)
_WORDS = _WORDS_TEXT.split()
_SUFFIXES = _SUFFIXES_TEXT.split()
_JAPANESE = _JAPANESE_TEXT.split()


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (tokens, scores, token_types) for a self-contained SPM vocab.

    Scores drive llama.cpp's SPM bigram merges (higher merges first); every
    multi-character piece has all its prefixes in the vocab so it is reachable.
    """
    tokens: list[str] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(piece: str, ttype: TokenType) -> None:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(int(ttype))

    for piece, ttype in _SPECIALS:
        add(piece, ttype)
    for b in range(256):
        add(f"<0x{b:02X}>", TokenType.BYTE)
    n_fixed = len(tokens)

    pieces: list[str] = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    for word in _WORDS + ["\u2581" + w for w in _WORDS] + _SUFFIXES + _JAPANESE:
        pieces.extend(word[:i] for i in range(1, len(word) + 1))
    for piece in pieces:
        add(piece, TokenType.NORMAL)

    # Specials/bytes score 0; normal pieces get higher scores the longer they
    # are, so longer pieces win merges (ties broken by position).
    scores = [0.0] * n_fixed + [
        -1000.0 + 10.0 * len(t) - i * 1e-3 for i, t in enumerate(tokens[n_fixed:])
    ]
    return tokens, scores, types


def write_moe_gguf(
    path: Path,
    *,
    n_layer: int = 4,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_embd: int = 64,
    n_ff_exp: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    ctx: int = 4096,
    seed: int = 0,
    chat_template: str = CHATML_TEMPLATE,
) -> Path:
    """Write a random-weights qwen3moe GGUF file to ``path`` and return it.

    Matrices are F16, norm weights F32. ``n_embd`` must be divisible by
    ``n_head``, ``n_head`` by ``n_head_kv``, and the head size must be even
    (RoPE). Same arguments and seed give byte-identical files.
    """
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError("need n_embd % n_head == 0, n_head % n_head_kv == 0, even head size")
    if not 0 < n_expert_used <= n_expert:
        raise ValueError("need 0 < n_expert_used <= n_expert")

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    w = GGUFWriter(path, ARCH)  # also writes general.architecture
    w.add_name("sweeper-tiny-moe")
    w.add_file_type(LlamaFileType.MOSTLY_F16)  # only cosmetic ("F16" in the desc)
    # Hyper-parameters; keys are "qwen3moe.*". Required by llama.cpp: context,
    # embedding, block count (general loader), rms eps (qwen3moe). head_count
    # must be set (default 0 = "no attention"), expert_count/expert_used_count
    # must be > 0 for qwen3moe. expert_feed_forward_length sets the expert
    # width (else n_ff / n_expert_used). feed_forward_length is unused by
    # qwen3moe but written for tools that print it. key/value length and rope
    # dimension default to n_embd / n_head; written explicitly for clarity.
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff_exp * n_expert_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_expert_used)

    # Tokenizer: model "llama" = SPM. tokens/scores/token_type are read by the
    # vocab loader; ids are explicit although they equal the SPM defaults.
    # add_space_prefix=False makes detokenize(tokenize(s)) == s exactly
    # (SPM otherwise prepends a space, like Llama 1/2).
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(0)
    w.add_eot_token_id(IM_END_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(chat_template)

    def mat(*shape: int, std: float = 0.02) -> np.ndarray:
        # numpy shape is the reverse of ggml's ne: (rows=out, cols=in).
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    out = mat(n_vocab, n_embd, std=0.5)
    out[[i for i, t in enumerate(types) if t != int(TokenType.NORMAL)]] = 0  # never argmax
    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, std=0.5))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", out)
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(n_embd))
        w.add_tensor(p + "attn_q.weight", mat(n_head * head_dim, n_embd))
        w.add_tensor(p + "attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_head * head_dim))
        w.add_tensor(p + "attn_q_norm.weight", ones(head_dim))
        w.add_tensor(p + "attn_k_norm.weight", ones(head_dim))
        w.add_tensor(p + "ffn_norm.weight", ones(n_embd))
        w.add_tensor(p + "ffn_gate_inp.weight", mat(n_expert, n_embd, std=0.5).astype(np.float32))
        # Merged experts: ggml ne {n_embd, n_ff_exp, n_expert} -> numpy (E, F, D).
        w.add_tensor(p + "ffn_gate_exps.weight", mat(n_expert, n_ff_exp, n_embd))
        w.add_tensor(p + "ffn_up_exps.weight", mat(n_expert, n_ff_exp, n_embd))
        w.add_tensor(p + "ffn_down_exps.weight", mat(n_expert, n_embd, n_ff_exp))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
