#!/usr/bin/env python3
"""Holds GPU memory for the arbiter's NVML check (tests/arbiter_gpu.rs).

Writes its PID to --pid-file, allocates --gib GiB with torch, prints "allocated", holds it while
--hold-file exists, then frees it (the CUDA context stays, so NVML still lists the process with a
few hundred MiB), prints "released" and waits to be killed.
"""
import argparse, os, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--gib", type=float, required=True)
ap.add_argument("--pid-file", required=True)
ap.add_argument("--hold-file", required=True)
a = ap.parse_args()

import torch  # noqa: E402  (after argparse so --help works without torch)

with open(a.pid_file, "w") as f:
    f.write(str(os.getpid()))
torch.cuda.init()
n = int(a.gib * (1 << 30))
x = torch.empty(n, dtype=torch.uint8, device="cuda")
x.fill_(1)  # touch it so it is really resident
torch.cuda.synchronize()
print("allocated", n, flush=True)
while os.path.exists(a.hold_file):
    time.sleep(0.05)
del x
torch.cuda.empty_cache()
torch.cuda.synchronize()
print("released", flush=True)
while True:
    time.sleep(1)
