#!/usr/bin/env python3
"""Writes okome-tiny, a tiny random-weight llama-architecture GGUF model that llama.cpp loads.

    python make_tiny_gguf.py OUT.gguf [--n-embd N --n-layer N --n-ff N]

(the size options exist only to make a deliberately heavy variant, e.g. to watch llama-server's
"Loading model" state in capture_llamacpp_wire.sh; the defaults make okome-tiny)

It exists so integration tests can run a REAL llama-server without downloading any model. The
weights are random with a fixed seed, so the file is byte-for-byte reproducible and greedy
(temperature 0) output is deterministic for a given llama-server build. The text it generates is
gibberish, but printable: only whole-word tokens (" the", " cat", ...) and a few punctuation marks
get non-zero rows in the output projection, so control tokens, byte tokens and EOS/<|im_end|>
always have logit 0 while the best word has a logit of several units. Consequence: the model
never stops by itself; generation ends at max_tokens (finish_reason "length") or a stop string.

Tokenizer: SentencePiece-style ("llama" in GGUF terms): <unk>, <s>, </s>, the ChatML control
tokens <|im_start|>/<|im_end|>, the 256 byte-fallback tokens <0x00>..<0xFF>, every printable ASCII
character, "▁" (the SPM space), and a list of common English words as "▁word" pieces together
with all their "▁"-prefixes (SPM merges pairs only when the merged piece is in the vocabulary).
Chat template: ChatML, in jinja that llama-server's engine accepts.

Depends on the pinned `gguf` and `numpy` from tests/clients/requirements.txt. Changing this file
changes its hash, hence the cached model's name (tests/engines/llamacpp.sh).
"""

import argparse

import numpy as np
import gguf

SEED = 20240607
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_LAYER = 2
N_FF = 128
N_CTX = 2048
RMS_EPS = 1e-5
ROPE_BASE = 10000.0

WORDS = """
the a an and of to in is it that was for on are as with his they at be this have from or one
had by word but not what all were we when your can said there use each which she do how their
if will up other about out many then them these so some her would make like him into time has
look two more write go see number no way could people my than first water been call who oil its
now find long down day did get come made may part over new sound take only little work know
place year live me back give most very after thing our just name good sentence man think say
great where help through much before line right too mean old any same tell boy follow came want
show also around form three small set put end does another well large must big even such because
turn here why ask went men read need land different home us move try kind hand picture again
change off play spell air away animal house point page letter mother answer found study still
learn should world cat dog tree river sky stone bird fish light dark red blue green okome
""".split()
PUNCT_OUT = [".", ",", "!", "?"]  # punctuation the model may emit besides words

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_vocab():
    tokens, scores, types = [], [], []

    def add(piece, score, ttype):
        tokens.append(piece)
        scores.append(float(score))
        types.append(int(ttype))

    T = gguf.TokenType
    add("<unk>", 0.0, T.UNKNOWN)
    add("<s>", 0.0, T.CONTROL)
    add("</s>", 0.0, T.CONTROL)
    add("<|im_start|>", 0.0, T.CONTROL)
    add("<|im_end|>", 0.0, T.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, T.BYTE)
    seen = set(tokens)
    # single characters: SPM space + printable ASCII
    for ch in ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]:
        add(ch, -1000.0, T.NORMAL)
        seen.add(ch)
    # words and all their prefixes; longer pieces score higher so they merge first
    output_ids = []
    for w in WORDS:
        piece = "\u2581" + w
        for n in range(2, len(piece) + 1):
            p = piece[:n]
            if p not in seen:
                add(p, -1000.0 + 10.0 * n, T.NORMAL)
                seen.add(p)
        output_ids.append(tokens.index(piece))
    for p in PUNCT_OUT:
        output_ids.append(tokens.index(p))
    return tokens, scores, types, sorted(set(output_ids))


def main():
    ap = argparse.ArgumentParser(description="write the okome-tiny GGUF test model")
    ap.add_argument("out")
    ap.add_argument("--n-embd", type=int, default=N_EMBD)
    ap.add_argument("--n-layer", type=int, default=N_LAYER)
    ap.add_argument("--n-ff", type=int, default=N_FF)
    args = ap.parse_args()
    write(args.out, args.n_embd, args.n_layer, args.n_ff)


def write(out, N_EMBD, N_LAYER, N_FF):
    tokens, scores, types, output_ids = build_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def rand(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("okome-tiny")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are GGML ne[] reversed: a (rows, cols) array is ne = [cols, rows].
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, std=1.0))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(N_EMBD, N_EMBD, std=0.3))
        w.add_tensor(p + "attn_k.weight", rand(N_EMBD // N_HEAD * N_HEAD_KV, N_EMBD, std=0.3))
        w.add_tensor(p + "attn_v.weight", rand(N_EMBD // N_HEAD * N_HEAD_KV, N_EMBD, std=0.3))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_EMBD, std=0.2))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD, std=0.3))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD, std=0.3))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF, std=0.2))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out_w = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    out_w[output_ids] = rand(len(output_ids), N_EMBD, std=1.0)
    w.add_tensor("output.weight", out_w)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"make_tiny_gguf: wrote {out}: {n_vocab} tokens, {N_LAYER} layers, n_embd {N_EMBD}, "
          f"{len(output_ids)} emittable tokens, seed {SEED}")


if __name__ == "__main__":
    main()
