"""Benchmark: the fast engine against the transformers reference on one fixed workload.

Runs in one process, without Ray or pydantic (importable on a bare GPU box):

    python jobs/benchmark.py --config tiny-cpu            # tiny checkpoint, 32 codebooks, CPU
    python jobs/benchmark.py --config csm1b-cuda          # random weights at CSM-1B dims, bf16, CUDA

The workload is many scripts with a spread of text lengths and per-row frame caps
derived from the text (a random model never emits EOS, so caps decide lengths).
Prints a table (frames/s, x real time, useful / computed slot-frames, time to first
audio, peak memory) and the fast / reference ratios; `--json PATH` saves the rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from synth.engine import GenerationRequest, SamplingParams  # noqa: E402

WORDS = (
    "it was the best of times worst age wisdom call me ishmael some years ago never mind how long precisely "
    "having little money quick brown fox jumps over lazy dog pack my box with five dozen liquor jugs hello "
    "there how are you doing today fine thanks what about doctor smith numbers like appear in text as do "
    "quotes yes she said beginning universe was created this has made lot people very angry"
).split()


def workload(n: int, *, seed: int = 0, max_cap: int, frames_per_word: float = 4.0) -> list[GenerationRequest]:
    """n scripts: 2..60 words (log-uniform), cap = ~0.3 s of speech per word + slack, <= max_cap."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        words = int(np.exp(rng.uniform(np.log(2), np.log(60))))
        text = " ".join(rng.choice(WORDS, size=words)).capitalize() + "."
        cap = int(min(max_cap, max(8, round(words * frames_per_word + rng.randint(0, 10)))))
        out.append(GenerationRequest(f"r{i:04d}", text, int(rng.randint(0, 4)), cap, seed=i))
    return out


@dataclass
class Row:
    engine: str
    setting: str
    requests: int
    frames: int
    wall_s: float
    slot_frames: int
    ttfa_s: float
    peak_mem_gib: float
    warmup_s: float = 0.0
    frame_ms: float = 0.0  # one frame step alone (fast engine), all slots
    decode_s: float = 0.0  # Mimi decoding inside wall_s (fast engine)
    cpu_s: float = 0.0  # process CPU time inside wall_s: a fairer basis on a shared CPU box

    @property
    def fps(self):
        return self.frames / self.wall_s

    def as_dict(self, frame_rate_hz: float):
        return {**self.__dict__, "frames_per_s": self.fps, "x_real_time": self.fps / frame_rate_hz,
                "frames_per_cpu_s": self.frames / max(self.cpu_s, 1e-9),
                "useful_fraction": self.frames / max(self.slot_frames, 1)}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process-wide max RSS


def run_reference(path, requests, sampling, *, device, dtype, batch_size) -> Row:
    from synth.reference_engine import TransformersEngine

    engine = TransformersEngine.load(path, device=device, dtype=dtype, compile=False, batch_size=batch_size)
    batches = engine.batches(requests)  # the reference's own batching, timed batch by batch below
    _reset_peak(device)
    frames = slot_frames = 0
    ttfa = None
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in batches:
        results = engine.generate_batch(batch, sampling)
        _sync(device)
        ttfa = ttfa if ttfa is not None else time.perf_counter() - t0
        frames += sum(r.num_frames for r in results)
        slot_frames += results[0].info["batch_frames"] * len(results)
    wall = time.perf_counter() - t0
    row = Row("transformers", f"batch {batch_size}", len(requests), frames, wall, slot_frames, ttfa, _peak_gib(device),
              cpu_s=time.process_time() - c0)
    del engine
    return row


def run_fast(path, requests, sampling, *, device, dtype, num_slots, max_positions, compile) -> Row:
    from synth.fast_engine import FastEngine

    _reset_peak(device)
    engine = FastEngine.load(path, device=device, dtype=dtype, num_slots=num_slots, max_positions=max_positions,
                             compile=compile, warmup=True)
    before = engine.scheduler.stats.slot_frames
    c0, t0 = time.process_time(), time.perf_counter()
    results = engine.generate(requests, sampling)
    _sync(device)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    setting = f"{num_slots} slots" + (", compiled" if compile else "")
    row = Row("fast", setting, len(requests), sum(r.num_frames for r in results), wall,
              engine.scheduler.stats.slot_frames - before, min(r.info["ready_s"] for r in results),
              _peak_gib(device), engine.compile_s, decode_s=engine.codec.decode_s, cpu_s=cpu)
    # The frame step alone: what one graph replay (or eager frame) costs at this slot count.
    with torch.inference_mode():
        sample = sampling.do_sample
        engine.scheduler.run_frame(sample)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            engine.scheduler.run_frame(sample)
        _sync(device)
        row.frame_ms = (time.perf_counter() - t0) / 20 * 1000
    del engine, results
    gc.collect()
    return row


def build_csm1b_random(out_dir: Path, device: str) -> Path:
    """Random weights at csm-1b's dimensions (CsmConfig defaults; Mimi defaults), saved with
    save_pretrained next to the tiny tokenizer/processor, so both engines load from disk."""
    from transformers import CsmConfig, CsmForConditionalGeneration

    from synth.tiny_checkpoint import tiny_model_and_processor

    if (out_dir / "config.json").exists():
        return out_dir
    _, processor = tiny_model_and_processor(num_codebooks=32, hidden_size=64, num_layers=1)
    tok = processor.tokenizer
    bos, _, audio, audio_eos = tok.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>",
                                                          "<|audio_eos|>"])
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}
    config = CsmConfig(
        bos_token_id=bos, audio_token_id=audio, audio_eos_token_id=audio_eos, pad_token_id=audio,
        rope_parameters=rope, depth_decoder_config={"rope_parameters": rope},
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = CsmForConditionalGeneration(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        # Tie the audio tables by hand: some transformers versions build them untied.
        model.backbone_model.embed_tokens.embed_audio_tokens.weight.copy_(model.depth_decoder.model.embed_tokens.weight)
        # Mimi has 2048 codes: keep codes 2048..2050 out of reach of sampling/argmax.
        model.lm_head.weight[2048:] = 0
        model.depth_decoder.codebooks_head.weight[:, :, 2048:] = 0
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    gc.collect()
    return out_dir


CONFIGS = {
    # name: device, dtype, requests, max frames, reference batch-1 requests, ref batch, slot counts, positions
    "tiny-cpu": dict(device="cpu", dtype="float32", requests=128, max_cap=80, batch1=6, ref_batch=8,
                     slots=[16, 32, 64], max_positions=256),
    "csm1b-cuda": dict(device="cuda", dtype="bfloat16", requests=512, max_cap=250, batch1=2, ref_batch=16,
                       slots=[1, 64, 128, 256], max_positions=512),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny-cpu")
    parser.add_argument("--checkpoint", help="checkpoint dir (default: built into a temp dir)")
    parser.add_argument("--requests", type=int, help="workload size")
    parser.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], help="fast-engine slot counts")
    parser.add_argument("--ref-batch", type=int)
    parser.add_argument("--batch1-requests", type=int, help="rows for the batch-1 reference run")
    parser.add_argument("--ref-requests", type=int, help="rows for the padded reference run (default: all)")
    parser.add_argument("--max-positions", type=int)
    parser.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                        help="torch.compile the fast engine's steps (auto: CUDA only)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    for key in ("requests", "slots", "ref_batch", "max_positions"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.batch1_requests is not None:
        cfg["batch1"] = args.batch1_requests
    device, dtype = cfg["device"], cfg["dtype"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("config needs CUDA, and torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    compile = {"auto": device == "cuda", "yes": True, "no": False}[args.compile]

    tmp = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    if args.checkpoint:
        path = Path(args.checkpoint)
    elif args.config == "tiny-cpu":
        from synth.tiny_checkpoint import ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint(tmp / "tiny-csm")
    else:
        path = build_csm1b_random(tmp / "csm1b-random", device)
    path = str(path)

    from transformers import CsmConfig

    codec = CsmConfig.from_pretrained(path).codec_config
    frame_rate = float(codec.frame_rate)
    requests = workload(cfg["requests"], max_cap=cfg["max_cap"])
    sampling = SamplingParams(do_sample=False) if args.greedy else SamplingParams(
        do_sample=True, temperature=0.9, top_k=50, depth_temperature=0.9, depth_top_k=50)
    print(f"# {args.config}: {len(requests)} requests, caps {min(r.max_frames for r in requests)}.."
          f"{max(r.max_frames for r in requests)} frames (sum {sum(r.max_frames for r in requests)}), "
          f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {'greedy' if args.greedy else 'sampling'}", flush=True)

    rows: list[Row] = []
    if not args.skip_reference:
        n1 = cfg["batch1"]
        if n1:
            rows.append(run_reference(path, requests[:n1], sampling, device=device, dtype=dtype, batch_size=1))
            print("done:", rows[-1].as_dict(frame_rate), flush=True)
        n_ref = args.ref_requests or len(requests)
        rows.append(run_reference(path, requests[:n_ref], sampling, device=device, dtype=dtype,
                                  batch_size=cfg["ref_batch"]))
        print("done:", rows[-1].as_dict(frame_rate), flush=True)
    for slots in cfg["slots"]:
        try:
            reqs = requests if slots > 1 else requests[: max(cfg["batch1"], 2)]
            rows.append(run_fast(path, reqs, sampling, device=device, dtype=dtype, num_slots=slots,
                                 max_positions=cfg["max_positions"], compile=compile))
            print("done:", rows[-1].as_dict(frame_rate), flush=True)
        except torch.OutOfMemoryError as err:
            print(f"fast {slots} slots: out of memory ({err})", flush=True)
            gc.collect()
            torch.cuda.empty_cache()

    print()
    header = "| engine | setting | rows | frames | wall s | frames/s | x real time | useful/computed | first audio s | peak mem GiB | warm-up s | frame step ms | decode s | frames per CPU s |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d = r.as_dict(frame_rate)
        print(f"| {r.engine} | {r.setting} | {r.requests} | {r.frames} | {r.wall_s:.1f} | {r.fps:.1f} | "
              f"{d['x_real_time']:.1f} | {d['useful_fraction']:.2f} | {r.ttfa_s:.2f} | {r.peak_mem_gib:.2f} | "
              f"{r.warmup_s:.1f} | {r.frame_ms:.1f} | {r.decode_s:.1f} | {d['frames_per_cpu_s']:.1f} |")
    refs = [r for r in rows if r.engine == "transformers"]
    fast = [r for r in rows if r.engine == "fast"]
    if refs and fast:
        best = max(fast, key=lambda r: r.fps)
        print()
        for ref in refs:
            print(f"best fast ({best.setting}) / transformers {ref.setting}: throughput x{best.fps / ref.fps:.1f}, "
                  f"per CPU second x{(best.frames / best.cpu_s) / (ref.frames / ref.cpu_s):.1f}, "
                  f"first audio x{ref.ttfa_s / best.ttfa_s:.1f} sooner")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict(frame_rate) for r in rows], indent=1))


if __name__ == "__main__":
    main()
