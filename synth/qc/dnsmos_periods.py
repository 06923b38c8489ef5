"""DNSMOS of a clip shorter than its 9 s window, from one period of the repeated clip and the edges.

DNSMOS scores a fixed 9.01 s window; a shorter clip is repeated to fill it, and its model's
cost is the window's whatever the clip's length (0.16 CPU-s on the 2-core box: three
quarters of the QC stage's cost on a CPU). This module owns the exact shortcut. The model
(speechmos's `sig_bak_ovr.onnx`) frames the window into 900 STFT frames (hop 160 samples),
runs 3x3 convolutions ('same' padding) and three 2x2 max-pools (900 frames -> 112 rows),
takes the global maximum over rows and frequencies, and ends in three dense layers. A clip of
a whole number of 80 ms codec frames (1280 samples at 16 kHz: a multiple of 8 STFT hops, so of
one pooled row) repeats with a period of whole rows: every row whose receptive field (18 STFT
frames either side, `HALO_ROWS` rows) stays inside the window has the value of the row one
period earlier. So the global maximum is the maximum over the first `HALO_ROWS` rows, one
period of rows after them and the last `HALO_ROWS` rows: computed from two short stretches of
the window (`plan`), through the same graph cut before its global maximum and given a free
length (`FeatureGraph` in onnxruntime, or its torch rebuild `synth.qc.dnsmos_net.FeatureNet`),
with the dense head in numpy (`raw`; the whole window is the one stretch `WHOLE`). Same values as the whole window within
float rounding (tests/qc/test_dnsmos_periods.py: within 1e-5 of onnxruntime on the window);
a 1 s clip costs a quarter of the window, a 4 s one two thirds; clips of another length or too
long to gain go through the whole window. Editing the graph needs `onnx`; without it the
caller keeps the whole window. It knows nothing about the scorer or thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

HOP = 160  # samples per STFT frame (10 ms at 16 kHz); a frame is 2 hops
FRAMES = 900  # STFT frames of the 9.01 s window
POOL = 8  # STFT frames per pooled row (three 2x2 max-pools)
ROWS = FRAMES // POOL  # 112 rows reach the global maximum (the last 4 frames only through the halo)
HALO_ROWS = 3  # rows either side a row's value depends on: 4 + 2 + 4 + 8 = 18 STFT frames, rounded up to rows
PERIOD_SAMPLES = POOL * HOP  # a clip of whole rows (1280 samples: one 80 ms codec frame) repeats by rows
MAX_SHARE = 0.85  # take the shortcut when it computes at most this share of the window's frames

FEATURES = "mos_estimator_logpow/conv2d_6/Relu:0"  # the last convolution, before the global maximum
DENSE = "mos_estimator_logpow/dense{}/{}/ReadVariableOp/resource:0"


@dataclass(frozen=True)
class Stretch:
    """A stretch of the filled window to run: samples [start, stop), and which of its rows are true
    (their receptive field inside the stretch): rows [first_row, stop_row)."""

    start: int
    stop: int
    first_row: int
    stop_row: int


def plan(num_samples: int) -> tuple[Stretch, Stretch] | None:
    """The two stretches that give a clip's DNSMOS through its period (the head and one period, and
    the tail), or None when the whole window is to be run (not a whole number of rows, a period too
    long for the window's inner rows, or too little to gain)."""
    if num_samples <= 0 or num_samples % PERIOD_SAMPLES:
        return None
    period_rows = num_samples // PERIOD_SAMPLES
    if period_rows > ROWS - 2 * HALO_ROWS:  # the inner rows would not hold a whole period
        return None
    head_rows = 2 * HALO_ROWS + period_rows  # the first rows, a period, and the halo that makes them true
    tail_start = POOL * (ROWS - 2 * HALO_ROWS)  # from here to the window's end: the last rows and their halo
    if POOL * head_rows + (FRAMES - tail_start) > MAX_SHARE * FRAMES:
        return None
    head = Stretch(0, HOP * (POOL * head_rows + 1), 0, HALO_ROWS + period_rows)
    tail = Stretch(HOP * tail_start, HOP * (FRAMES + 1), HALO_ROWS, 2 * HALO_ROWS)
    return head, tail


WHOLE = Stretch(0, HOP * (FRAMES + 1), 0, ROWS)  # the whole window as one stretch: every row true


def load_weights(path: str, onnx) -> dict[str, np.ndarray]:
    """The graph's weights (initializers) by name; onnx: the `onnx` module."""
    from onnx import numpy_helper

    return {w.name: numpy_helper.to_array(w) for w in onnx.load(path).graph.initializer}


def dense_head(weights: dict[str, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """The three dense layers after the global maximum, by (layer, part)."""
    return {(layer, part): weights[DENSE.format(layer, part)] for layer in ("", "_1", "_3") for part in ("MatMul", "BiasAdd")}


def raw(features: Callable[[np.ndarray], np.ndarray], head: dict, windows: np.ndarray,
        stretches: Sequence[Stretch]) -> np.ndarray:
    """The model's raw (signal, background, overall) [B, 3] of filled windows [B, FRAMES * HOP + HOP]
    from their stretches (the same for every window); features: samples [B, S] -> [B, 64, rows, 20]
    (`FeatureGraph`, or `synth.qc.dnsmos_net.FeatureNet`)."""
    peak = None
    for s in stretches:
        rows = features(windows[:, s.start : s.stop])  # [B, 64, rows, 20]
        assert rows.shape[2] >= s.stop_row, (rows.shape, s)
        top = rows[:, :, s.first_row : s.stop_row].max(axis=(2, 3))  # [B, 64]
        peak = top if peak is None else np.maximum(peak, top)
    x = np.maximum(peak @ head["", "MatMul"] + head["", "BiasAdd"], 0)
    x = np.maximum(x @ head["_1", "MatMul"] + head["_1", "BiasAdd"], 0)
    return x @ head["_3", "MatMul"] + head["_3", "BiasAdd"]


class FeatureGraph:
    """The DNSMOS graph cut before its global maximum, on any whole number of STFT frames, run by
    onnxruntime: samples [B, S] -> features [B, 64, rows, 20]."""

    def __init__(self, path: str, session_options, onnx):
        """path: speechmos's sig_bak_ovr.onnx; onnx: the `onnx` module (the graph is edited in memory)."""
        import onnxruntime as ort
        from onnx import numpy_helper

        model = onnx.load(path)
        graph = model.graph
        weights = {w.name: w for w in graph.initializer}

        def replace(name: str, values) -> None:
            dtype = numpy_helper.to_array(weights[name]).dtype
            weights[name].CopyFrom(numpy_helper.from_array(np.asarray(values, dtype), name))

        # free length: the framing's crop ends 160 samples before the input's end, reshapes keep the batch
        replace("input_1:01_cropping_end", [np.iinfo(np.int64).max, -HOP])
        replace("shape_tensor", [0, -1, HOP])
        replace("shape_tensor1", [0, -1, HOP])
        length = graph.input[0].type.tensor_type.shape.dim[1]
        length.ClearField("dim_value")
        length.dim_param = "samples"
        kept = []
        for node in graph.node:
            kept.append(node)
            if FEATURES in node.output:
                break
        else:
            raise ValueError(f"{path}: no {FEATURES} in the graph (another DNSMOS model?)")
        del graph.node[:]
        graph.node.extend(kept)
        del graph.output[:]
        graph.output.extend([onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None)])
        used = {name for node in graph.node for name in node.input}
        for name in [n for n in weights if n not in used]:
            graph.initializer.remove(weights[name])
        del graph.value_info[:]
        self.session = ort.InferenceSession(model.SerializeToString(), session_options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_1": np.ascontiguousarray(samples, np.float32)})[0]
