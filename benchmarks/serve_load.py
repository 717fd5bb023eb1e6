"""Load on `moe-jax serve`: many concurrent clients against one client alone.

Starts `moe-jax serve` on a free port for a trained arithmetic workdir (the README's main
job), waits until it listens, and sends held-out arithmetic prompts ("64-973-75=") to
POST /v1/completions at temperature 0:

  1. one client alone, `--requests` requests one after another;
  2. `--clients` clients at once, `--requests` each (different prompts).

then sends the first `--openai-prompts` prompts through the official `openai` client,
in one request and streamed one by one. Then runs `moe-jax sample --json` on the same
prompts and compares answers. Prints ONE
JSON line: completion tokens/s of each phase and their ratio (the limit is `--clients`,
perfect scaling), p50/p99 request latency, the mean batch occupancy of the concurrent
phase (from /metrics: slots in use / slots, over its decode steps), failed requests,
whether every answer equals `moe-jax sample`'s, held-out exact match, and the same for
the openai client's answers.

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=runs/arith
    python benchmarks/serve_load.py --workdir runs/arith              # 32 clients x 8 requests

Server and clients share the machine: on a few cores the client threads take CPU from
the server, so the ratio is a lower bound on what the server alone would show.

`--mesh data=2,expert=4` serves on a mesh (`moe-jax serve --mesh`); the answers are
still compared with one-device `moe-jax sample`. On a CPU machine, simulate the devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/serve_load.py \
        --workdir runs/arith --mesh data=2,expert=4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import httpx

CONFIG = "experiments/pretrain_arith.py:tiny"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/arith")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-batch", type=int, default=32, help="the server's decode slots")
    p.add_argument("--context", type=int, default=64, help="tokens per slot")
    p.add_argument("--max-tokens", type=int, default=40, help="as the config's eval.max_new_tokens")
    p.add_argument("--openai-prompts", type=int, default=16,
                   help="prompts also sent through the official openai client")
    p.add_argument("--mesh", help="the server's mesh, as for `moe-jax serve --mesh` (default: one device)")
    return p.parse_args()


def held_out(config_spec: str, workdir: str, count: int) -> list:
    from moe_jax.config import load_config
    from moe_jax.data.tfds_builders import load_task_split

    d = load_config(config_spec).data
    source = load_task_split(d.task, "test", d.data_dir or os.path.join(workdir, "data"),
                             num_train=d.num_train, num_test=d.num_test, seed=d.seed, **d.difficulty)
    if len(source) < count:
        raise SystemExit(f"the held-out split has {len(source)} problems; {count} needed")
    return [source[i] for i in range(count)]


def text_of(field) -> str:
    return field.decode() if isinstance(field, bytes) else str(field)


def start_server(args) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "moe_jax.cli", "serve", "--checkpoint", args.workdir,
               "--config", args.config, "--port", "0", "--max-batch", str(args.max_batch),
               "--context", str(args.context), "--model-name", "arith"]
    command += ["--mesh", args.mesh] if args.mesh else []
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = ""
    for line in server.stdout:  # on a mesh its placement first; the URL once listening
        found = re.search(r"on (http://\S+)", line)
        if found:
            return server, found.group(1)
    server.kill()
    raise SystemExit(f"the server did not start: {line!r}")


def scrape(url) -> dict:
    text = httpx.get(url + "/metrics").text
    return {name: float(value) for name, value in re.findall(r"^(\S+) (\S+)$", text, re.MULTILINE)}


def run_clients(url, prompts_per_client, max_tokens) -> tuple[float, list]:
    """Each client sends its prompts in turn. -> (seconds, [(prompt, text, tokens,
    latency) or (prompt, None, error, latency)])."""
    results, lock = [], threading.Lock()

    def client(prompts):
        with httpx.Client(timeout=600) as http:
            for prompt in prompts:
                start = time.perf_counter()
                try:
                    r = http.post(url + "/v1/completions", json={
                        "model": "arith", "prompt": prompt, "max_tokens": max_tokens,
                        "temperature": 0})
                    r.raise_for_status()
                    body = r.json()
                    row = (prompt, body["choices"][0]["text"], body["usage"]["completion_tokens"])
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    row = (prompt, None, repr(e))
                with lock:
                    results.append(row + (time.perf_counter() - start,))

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts_per_client]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results


def openai_client_answers(url, prompts, max_tokens) -> dict:
    """The official OpenAI client: one request for all prompts, then each one streamed."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model="arith", max_tokens=max_tokens, temperature=0)
    whole = client.completions.create(prompt=prompts, **kw)
    streamed = ["".join(c.choices[0].text for c in client.completions.create(prompt=p, stream=True, **kw))
                for p in prompts]
    return {"whole": [c.text for c in whole.choices], "streamed": streamed}


def sample_answers(args, prompts) -> dict:
    command = [sys.executable, "-m", "moe_jax.cli", "sample", "--checkpoint", args.workdir,
               "--config", args.config, "--max-new-tokens", str(args.max_tokens), "--json"]
    for p in prompts:
        command += ["--prompt", p]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {row["prompt"]: row["completion"] for row in map(json.loads, out.splitlines())}


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    args = parse_args()
    from moe_jax.data.tasks.arithmetic import verify

    total = args.clients * args.requests
    problems = held_out(args.config, args.workdir, total)
    prompts = [text_of(p["prompt"]) for p in problems]
    answers = {text_of(p["prompt"]): text_of(p["answer"]) for p in problems}
    server, url = start_server(args)
    try:
        run_clients(url, [prompts[:2]], args.max_tokens)  # first requests through the server
        alone_s, alone = run_clients(url, [prompts[:args.requests]], args.max_tokens)
        before = scrape(url)
        many_s, many = run_clients(
            url, [prompts[i * args.requests:(i + 1) * args.requests] for i in range(args.clients)],
            args.max_tokens)
        after = scrape(url)
        slots_free = after["moe_jax_slots_active"] == 0
        official = openai_client_answers(url, prompts[:args.openai_prompts], args.max_tokens)
    finally:
        server.terminate()
        server.wait(60)

    failed = [r for r in alone + many if r[1] is None]
    def tokens(rows):
        return sum(r[2] for r in rows if r[1] is not None)

    steps = after["moe_jax_decode_steps_total"] - before["moe_jax_decode_steps_total"]
    busy = after["moe_jax_busy_slot_steps_total"] - before["moe_jax_busy_slot_steps_total"]
    sampled = sample_answers(args, prompts)
    served = {r[0]: r[1] for r in many if r[1] is not None}
    mismatches = [p for p in prompts if served.get(p) != sampled.get(p)]
    alone_tps, many_tps = tokens(alone) / alone_s, tokens(many) / many_s
    checked = prompts[:args.openai_prompts]
    expected = [sampled.get(p) for p in checked]
    print(json.dumps({
        "clients": args.clients, "requests_per_client": args.requests, "mesh": args.mesh,
        "max_batch": args.max_batch, "context": args.context, "max_tokens": args.max_tokens,
        "tokens_per_s_one_client": round(alone_tps, 1), "tokens_per_s_concurrent": round(many_tps, 1),
        "throughput_ratio": round(many_tps / alone_tps, 2), "ratio_limit": args.clients,
        "latency_p50_s_one_client": round(statistics.median(r[3] for r in alone), 3),
        "latency_p50_s": round(percentile([r[3] for r in many], 0.5), 3),
        "latency_p99_s": round(percentile([r[3] for r in many], 0.99), 3),
        "mean_batch_occupancy": round(busy / (steps * args.max_batch), 3) if steps else 0.0,
        "failed_requests": len(failed), "slots_free_after": slots_free,
        "equal_to_sample": not mismatches, "mismatches": len(mismatches),
        "held_out_exact_match": round(sum(verify(answers[p], served.get(p, "")) for p in prompts)
                                      / total, 3),
        "openai_client_prompts": len(checked),
        "openai_client_equal_to_sample": official["whole"] == expected == official["streamed"],
        "openai_client_exact_match": round(
            sum(verify(answers[p], t) for p, t in zip(checked, official["streamed"])) / len(checked), 3),
    }))
    ok = official["whole"] == expected == official["streamed"]
    return 0 if not failed and not mismatches and ok else 1


if __name__ == "__main__":
    sys.exit(main())
