"""Tokenizer speed: prompts/s, ours (pure Python BPE with an lru cache) vs 🤗 transformers' CLIPTokenizer (Rust), same
vocabulary, same settings (padding="max_length", max_length=77, truncation=True, return_tensors="pt"), one process.

    PYTHONPATH=. python bench/tokenizer.py [--n 2000] [--repeats 5]

Three workloads: one prompt per call (what a pipeline does), batches of 64 prompts, and prompts of made-up words
with our BPE cache cleared before each pass (every word goes through the full merge loop)."""
import argparse, random, tempfile, time
import torch

def corpus(n, seed=0):
    rnd = random.Random(seed)
    subjects = ["an astronaut", "a red 7", "a cat", "a lighthouse", "a samurai", "a bowl of ramen", "the city of Tōkyō"]
    styles = ["oil painting", "photograph, 35mm", "watercolor", "8k, ultra detailed, trending on artstation",
              "by Greg Rutkowski", "isometric 3D render", "ukiyo-e", "cinematic lighting, volumetric fog"]
    places = ["on the moon", "in a forest", "under the sea", "at sunset", "on a blue background", "in Paris, 1920s"]
    return [f"{rnd.choice(subjects)} {rnd.choice(places)}, {', '.join(rnd.sample(styles, rnd.randint(1, 5)))}"
            + (" " + " ".join(rnd.choice(styles) for _ in range(12)) if rnd.random() < .1 else "") for _ in range(n)]

def best_rate(f, n_prompts, repeats):
    f()                                                      # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
    return n_prompts / best

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers
    from sd_from_scratch.tokenizer import CLIPTokenizer
    ours = CLIPTokenizer()
    d = tempfile.mkdtemp(); ours.save_pretrained(d)
    hf = transformers.CLIPTokenizer.from_pretrained(d)
    assert len(hf) == 49408
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    texts = corpus(a.n)
    assert torch.equal(ours(texts, warn=False).input_ids, hf(texts, **kw).input_ids), "ids differ: fix parity first"
    rows = []
    def single(tok, **k): return lambda: [tok(t, **k) for t in texts]
    def batched(tok, **k): return lambda: [tok(texts[i:i + 64], **k) for i in range(0, len(texts), 64)]
    rows.append(("1 prompt / call", best_rate(single(ours, warn=False), a.n, a.repeats), best_rate(single(hf, **kw), a.n, a.repeats)))
    rows.append(("64 prompts / call", best_rate(batched(ours, warn=False), a.n, a.repeats), best_rate(batched(hf, **kw), a.n, a.repeats)))
    rnd = random.Random(1)     # made-up words, (almost) never seen twice: BPE does the full merge loop every time
    rare = [" ".join("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(4, 12)))
                     for _ in range(8)) for _ in range(a.n)]
    def cold():
        ours._bpe.cache_clear()
        for t in rare: ours(t, warn=False)
    rows.append(("made-up words, cache cleared", best_rate(cold, a.n, a.repeats), best_rate(
                 lambda: [hf(t, **kw) for t in rare], a.n, a.repeats)))
    print(f"torch threads: {torch.get_num_threads()}   prompts: {a.n}   best of {a.repeats}")
    print(f"{'workload':34s} {'ours (prompts/s)':>17s} {'transformers':>13s} {'ours/transformers':>18s}")
    for name, o, h in rows: print(f"{name:34s} {o:17,.0f} {h:13,.0f} {o / h:17.2f}×")

if __name__ == "__main__":
    main()
