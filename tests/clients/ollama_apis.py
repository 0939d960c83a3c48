"""Drives Ollama's non-chat APIs with the official `ollama` Python client and prints what it
got as one JSON object, so a Rust test can compare a direct run with one through the edge.

usage: ollama_apis.py HOST MODE MODEL
  MODE models: show, embed (a string and a list), embeddings, ps, version
  MODE pull:   pull streamed (every progress line) and with stream=False
  MODE pull_refused: pull must fail; prints the status the client saw
The Python client has no `version()` method: /api/version goes through its own httpx client
(`Client._client`), with the client's headers and base URL.
"""

import json
import sys

import ollama

host, mode, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = ollama.Client(host=host)
out = {}

if mode == "models":
    s = client.show(model)
    out["show"] = {
        "family": s.details.family,
        "parameter_size": s.details.parameter_size,
        "capabilities": s.capabilities,
        "model_info": s.modelinfo,
        "modified_at": s.modified_at.isoformat(),
        "template": s.template,
    }
    one = client.embed(model=model, input="The sky is blue")
    many = client.embed(model=model, input=["first input", "second input", "third"])
    out["embed"] = {
        "model": one.model,
        "one": one.embeddings,
        "many": many.embeddings,
        "prompt_eval_count": [one.prompt_eval_count, many.prompt_eval_count],
    }
    out["embeddings"] = client.embeddings(model=model, prompt="The sky is blue").embedding
    out["ps"] = [m.model for m in client.ps().models]
    r = client._client.get("/api/version")
    r.raise_for_status()
    out["version"] = r.json()["version"]
elif mode == "pull":
    lines = [p.model_dump(exclude_none=True) for p in client.pull(model, stream=True)]
    out["stream"] = lines
    out["whole"] = client.pull(model).model_dump(exclude_none=True)
elif mode == "pull_refused":
    try:
        client.pull(model)
        out["status"] = 200
    except ollama.ResponseError as e:
        out["status"] = e.status_code
        out["error"] = e.error
else:
    sys.exit(f"unknown mode {mode}")

print(json.dumps(out))
