"""GGUF round trip of a trained model: ``preflab export`` a run's ``final/``, read the file back,
and compare greedy completions on chat prompts with the directory's own.

Three readers of the same prompts (rendered by the directory's chat template):

- ``final/`` itself, through transformers (the reference);
- the exported file, through transformers' own GGUF loader (``preflab --model x.gguf``);
- the exported file, through llama.cpp (``llama-cpp-python``), when that package imports
  (``--llama-cpp``). It is given the same prompt token ids, and decodes greedily.

For each it prints how many of the prompts give the same greedy completion token for token,
and where the first difference falls. A real model's greedy path can split at a near-tie
after any rounding: f16 rounds every 2-D weight, so a split late in a completion is rounding,
one at the first token is a defect.

    python benchmarks/gguf_roundtrip.py --model demo-real/compare/runs/dpo-s0/final \\
        --type f16 --prompts 16 --new-tokens 32 [--llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Write a short review of a documentary about deep-sea fish.",
    "What do you think of a budget smartphone? Answer in a few sentences.",
    "Give your honest opinion of a neighbourhood coffee shop.",
    "Review a fantasy novel with a talking dragon in under fifty words.",
    "Write a customer review of a slow cooker.",
    "How would you rate a public library? Explain briefly.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for better sleep.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat to someone who has never seen one.",
    "Suggest a name for a pet goldfish.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Tell me a short joke.",
]


def greedy_transformers(path: str, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    from preflab import models

    tokenizer = models.load_tokenizer(path)
    model = models.load_causal_lm(path).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append(y[0, len(ids):].tolist())
    return out


def greedy_llama_cpp(path: str, prompts: list[list[int]], texts: list[str], new_tokens: int,
                     eos: int | None) -> tuple[list[list[int]], int]:
    """llama.cpp's greedy completions of ``prompts`` (ids), and for how many of ``texts`` (the
    same prompts as text) llama.cpp's own tokenizer gives those ids."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=512, logits_all=False, verbose=False, n_threads=2)
    same_ids = sum(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == ids
                   for t, ids in zip(texts, prompts))
    out = []
    for ids in prompts:
        llm.reset()
        tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                                  reset=True):
            tokens.append(int(token))
            if token == eos or len(tokens) >= new_tokens:
                break
        out.append(tokens)
    return out, same_ids


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    same = sum(a == b for a, b in zip(reference, other))
    splits = [next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
              for a, b in zip(reference, other) if a != b]
    return {"equal": same, "of": len(reference), "first_difference_at": splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory (a run's final/)")
    parser.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--gguf", default="", help="where to write the file (default: a temp dir)")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="also decode with llama.cpp (needs llama-cpp-python)")
    args = parser.parse_args()

    from preflab import models
    from preflab.data.chat import tokenize_prompt

    tokenizer = models.load_tokenizer(args.model)
    encoded = [tokenize_prompt(tokenizer, [{"role": "user", "content": p}])
               for p in PROMPTS[: args.prompts]]
    prompts, texts = [ids for ids, _ in encoded], [text for _, text in encoded]
    gguf = Path(args.gguf or tempfile.mkdtemp(prefix="roundtrip-")) / "model.gguf" \
        if not args.gguf.endswith(".gguf") else Path(args.gguf)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "preflab.cli", "export", args.model, "--gguf",
                    str(gguf), "--type", args.type, "--no-progress", "--overwrite"], check=True)
    export_s = time.perf_counter() - started
    results: dict = {"model": args.model, "type": args.type, "gguf_bytes": gguf.stat().st_size,
                     "export_s": round(export_s, 1), "prompts": len(prompts),
                     "new_tokens": args.new_tokens}
    started = time.perf_counter()
    reference = greedy_transformers(args.model, prompts, args.new_tokens)
    results["directory_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    back = greedy_transformers(str(gguf), prompts, args.new_tokens)
    results["transformers_gguf_s"] = round(time.perf_counter() - started, 1)
    results["transformers_gguf"] = agreement(reference, back)
    results["chat_template_equal"] = (models.load_tokenizer(str(gguf)).chat_template
                                      == tokenizer.chat_template)
    if args.llama_cpp:
        try:
            started = time.perf_counter()
            native, same_ids = greedy_llama_cpp(str(gguf), prompts, texts, args.new_tokens,
                                                tokenizer.eos_token_id)
            results["llama_cpp_prompt_ids_equal"] = same_ids
            results["llama_cpp_s"] = round(time.perf_counter() - started, 1)
            # transformers' generate keeps the EOS it stops on; so does the loop above
            results["llama_cpp"] = agreement(reference, native)
        except ImportError as exc:
            results["llama_cpp"] = f"not run: {exc}"
    results["example"] = {"prompt": PROMPTS[0], "completion": tokenizer.decode(
        reference[0], skip_special_tokens=True)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
