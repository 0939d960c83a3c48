"""Drives the OpenAI APIs besides chat with the official `openai` Python client and prints
what it got as one JSON object, so a Rust test can compare a direct run with one through the
edge.

usage: openai_apis.py BASE_URL MODE MODEL
  MODE embeddings: embeddings.create with a string, a list, token ids (vLLM), as base64 (the
                   client's default) and as floats
  MODE embeddings_text: the same without token-id inputs (Ollama reads strings only)
  MODE completions: completions.create, whole and streamed (with usage)
  MODE retrieve: models.retrieve (vLLM has no such route: the edge answers it)
  MODE responses: responses.create, whole and streamed (every event type in order)
"""

import json
import sys

import openai

base, mode, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
out = {}

if mode in ("embeddings", "embeddings_text"):
    one = client.embeddings.create(model=model, input="The sky is blue")
    out["one"] = one.data[0].embedding
    out["model"] = one.model
    out["usage"] = one.usage.prompt_tokens
    many = client.embeddings.create(model=model, input=["first input", "second input"])
    out["many"] = [d.embedding for d in many.data]
    out["index"] = [d.index for d in many.data]
    floats = client.embeddings.create(model=model, input="The sky is blue", encoding_format="float")
    out["floats_match_base64"] = all(
        abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, one.data[0].embedding)
    ) and len(floats.data[0].embedding) == len(one.data[0].embedding)
    if mode == "embeddings":
        ids = client.embeddings.create(model=model, input=[[791, 13180, 374, 6437], [9906]])
        out["token_ids"] = [d.embedding for d in ids.data]
        out["token_ids_usage"] = ids.usage.prompt_tokens
elif mode == "completions":
    whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6)
    out["whole"] = {
        "text": whole.choices[0].text,
        "finish_reason": whole.choices[0].finish_reason,
        "completion_tokens": whole.usage.completion_tokens,
    }
    text, chunks, usage = "", 0, None
    for c in client.completions.create(
        model=model,
        prompt="Once upon a time",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if c.choices and c.choices[0].text:
            text += c.choices[0].text
            chunks += 1
        if c.usage:
            usage = c.usage.completion_tokens
    out["stream"] = {"text": text, "chunks": chunks, "completion_tokens": usage}
elif mode == "retrieve":
    m = client.models.retrieve(model)
    out["retrieve"] = {"id": m.id, "object": m.object}
elif mode == "responses":
    r = client.responses.create(model=model, input="Tell me a story", max_output_tokens=7)
    out["whole"] = {
        "text": r.output_text,
        "status": r.status,
        "output_tokens": r.usage.output_tokens,
        "object": r.object,
    }
    types, seqs, deltas, text, final = [], [], 0, "", None
    stream = client.responses.create(
        model=model,
        input=[{"role": "user", "content": "Tell me a story"}],
        instructions="Be brief.",
        stream=True,
    )
    for ev in stream:
        types.append(ev.type)
        seqs.append(ev.sequence_number)
        if ev.type == "response.output_text.delta":
            deltas += 1
            text += ev.delta
        elif ev.type == "response.completed":
            final = ev.response
    out["stream"] = {
        "types": types,
        "deltas": deltas,
        "text": text,
        "final_text": final.output_text,
        "output_tokens": final.usage.output_tokens,
        "sequence_numbers": seqs,
    }
else:
    sys.exit(f"unknown mode {mode}")

print(json.dumps(out))
