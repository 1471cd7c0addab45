"""A summarizer agent: joins the NOPS kernel, serves "summarize" (and a streaming variant), drains on SIGTERM.

Run it from the repository root next to `npm start`'s kernel (see README.md beside this file):

    NOPS_TENANT=acme PYTHONPATH=sdk/python/src python3 examples/python/summarizer.py
"""

import logging
import re

from nops_agent import HandlerError, create_agent

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

# Kernel address, identity, tenant and API key come from the SDK's defaults and NOPS_* variables.
agent = create_agent(name="summarizer-py", version="1.0.0", labels={"language": "python"})


def summarize_text(text: str, max_sentences: int) -> str:
    # A stand-in for a model call: keep the sentences with the most frequent words.
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    words = re.findall(r"[a-z']+", text.lower())
    freq = {w: words.count(w) for w in set(words) if len(w) > 3}
    ranked = sorted(sentences, key=lambda s: -sum(freq.get(w, 0) for w in re.findall(r"[a-z']+", s.lower())))
    keep = set(ranked[:max_sentences])
    return " ".join(s for s in sentences if s in keep)


@agent.handle("summarize", version="1.0.0", attributes={"method": "extractive"})
def summarize(inv):
    """JSON {"text": "...", "sentences": 2} in, JSON {"summary": "..."} out."""
    body = inv.json() if inv.content_type.startswith("application/json") else {"text": inv.text()}
    text = body.get("text", "") if isinstance(body, dict) else ""
    if not text:
        raise HandlerError("payload needs a non-empty text")
    return {"summary": summarize_text(text, int(body.get("sentences", 2))), "requestId": inv.request_id}


@agent.handle_stream("summarize.stream")
def summarize_stream(inv):
    """Streams the summary one sentence at a time."""
    for sentence in re.split(r"(?<=[.!?])\s+", summarize_text(inv.text(), 3)):
        if inv.cancelled():
            return
        yield sentence


if __name__ == "__main__":
    agent.run()
