#!/usr/bin/env python3
"""Writes tests/golden-act/: golden-style cases (the format of ../shared/golden/README.md) for the
activations and gate/up layouts beyond GPT-OSS's, computed in float64 with numpy from vLLM's
MoEActivation formulas, outside the library's code. meta.txt adds `activation`, `gate_up_layout`
and, for layers without biases, `bias none` (no bias files then). An activation without mul has a
gate_up_proj of [E, H, I]. Run it with any python that has numpy; the cases are committed.

    python3 tests/make_act_cases.py [OUT_DIR]
"""
import math
import os
import sys

import numpy as np


def round_to(a, dtype):
    """float64 -> the stored dtype's values (round to nearest even), as float64."""
    if dtype == "f32":
        return a.astype(np.float32).astype(np.float64)
    if dtype == "f16":
        return a.astype(np.float16).astype(np.float64)
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16  # bf16, ties to even
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def stored(a, dtype):
    """The bytes of a (already representable) in dtype."""
    if dtype == "f32":
        return a.astype(np.float32).tobytes()
    if dtype == "f16":
        return a.astype(np.float16).tobytes()
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def silu(v):
    return v / (1.0 + np.exp(-v))


def gelu(v):
    erf = np.vectorize(math.erf)
    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


def gelu_tanh(v):
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def activate(name, gu, inter, layout, alpha, limit):
    if name in ("silu", "gelu", "relu2"):  # without mul: gu is [I]
        return {"silu": silu, "gelu": gelu, "relu2": lambda v: np.maximum(v, 0.0) ** 2}[name](gu)
    if layout == "interleaved":
        gate, up = gu[0::2], gu[1::2]
    elif layout == "gate_up":
        gate, up = gu[:inter], gu[inter:]
    else:  # up_gate
        up, gate = gu[:inter], gu[inter:]
    if name == "swiglu":
        g, u = np.minimum(gate, limit), np.clip(up, -limit, limit)
        return (u + 1.0) * g / (1.0 + np.exp(-alpha * g))
    if name == "silu_mul":
        return silu(gate) * up
    if name == "gelu_mul":
        return gelu(gate) * up
    if name == "gelu_tanh_mul":
        return gelu_tanh(gate) * up
    if name == "swiglu_step":
        return np.minimum(silu(gate), limit) * np.clip(up, -limit, limit)
    raise ValueError(name)


CASES = [
    # name, dtype, T, H, I, E, K, activation, layout, bias, scale (of x: larger to reach clamps)
    ("silu_halves_nobias_bf16", "bf16", 40, 64, 96, 6, 2, "silu_mul", "gate_up", False, 1.0),
    ("gelu_upgate_f16", "f16", 33, 96, 64, 5, 3, "gelu_mul", "up_gate", True, 1.0),
    ("gelu_tanh_bf16", "bf16", 24, 64, 64, 4, 2, "gelu_tanh_mul", "interleaved", True, 1.0),
    ("swiglu_step_halves_bf16", "bf16", 30, 64, 64, 4, 2, "swiglu_step", "gate_up", True, 6.0),
    ("silu_halves_f32", "f32", 17, 64, 96, 5, 2, "silu_mul", "gate_up", False, 1.0),
    ("silu_nomul_bf16", "bf16", 20, 64, 64, 4, 2, "silu", "interleaved", True, 1.0),
    ("gelu_nomul_f16", "f16", 20, 64, 96, 4, 2, "gelu", "interleaved", False, 1.0),
    ("relu2_nomul_bf16", "bf16", 20, 96, 64, 4, 2, "relu2", "interleaved", True, 1.0),
    ("swiglu_upgate_bf16", "bf16", 25, 64, 64, 4, 2, "swiglu", "up_gate", True, 4.0),
]


def write_case(root, case, seed):
    name, dt, T, H, I, E, K, act, layout, bias, xscale = case
    rng = np.random.default_rng(seed)
    alpha, limit = 1.702, 7.0
    n1 = I if act in ("silu", "gelu", "relu2") else 2 * I
    x = round_to(rng.uniform(-xscale, xscale, (T, H)), dt)
    w1 = round_to(rng.uniform(-1, 1, (E, H, n1)) / math.sqrt(H), dt)
    w2 = round_to(rng.uniform(-1, 1, (E, I, H)) / math.sqrt(I), dt)
    b1 = round_to(rng.uniform(-0.1, 0.1, (E, n1)), dt) if bias else np.zeros((E, n1))
    b2 = round_to(rng.uniform(-0.1, 0.1, (E, H)), dt) if bias else np.zeros((E, H))
    ids = np.stack([rng.choice(E, K, replace=False) for _ in range(T)]).astype(np.int32)
    logits = rng.normal(size=(T, K))
    wts = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    dense = np.zeros((T, E), np.float32)
    for t in range(T):
        dense[t, ids[t]] = wts[t]
    expected = np.zeros((T, H))
    for t in range(T):
        for k in range(K):
            e = ids[t, k]
            gu = x[t] @ w1[e] + b1[e]
            h = round_to(activate(act, gu, I, layout, alpha, limit), dt)  # stored as the GPU does
            expected[t] += (h @ w2[e] + b2[e]) * float(wts[t, k])
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    meta = [
        ("name", name), ("tokens", T), ("hidden", H), ("intermediate", I), ("experts", E),
        ("top_k", K), ("alpha", alpha), ("limit", limit), ("dtype", dt), ("routing", "topk"),
        ("activation", act), ("gate_up_layout", layout),
    ]
    if not bias:
        meta.append(("bias", "none"))
    meta.append(("note", "made by tests/make_act_cases.py (numpy float64)"))
    with open(os.path.join(d, "meta.txt"), "w") as f:
        f.writelines(f"{k} {v}\n" for k, v in meta)
    files = {"x.bin": stored(x, dt), "gate_up_proj.bin": stored(w1, dt),
             "down_proj.bin": stored(w2, dt), "topk_ids.bin": ids.tobytes(),
             "topk_weights.bin": wts.tobytes(), "dense_weights.bin": dense.tobytes(),
             "expected.bin": expected.astype(np.float32).tobytes()}
    if bias:
        files["gate_up_proj_bias.bin"] = stored(b1, dt)
        files["down_proj_bias.bin"] = stored(b2, dt)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden-act")
    for i, case in enumerate(CASES):
        write_case(root, case, 1000 + i)
        print(f"{root}/{case[0]}")


if __name__ == "__main__":
    main()
