"""The default MiniLM across the 64 MiB that travel to a lent GPU machine (the fp32 file is 91 MB):

    python benchmarks/device_prep.py --pack SRC_DIR DEST_DIR   # here: an fp16 copy (45 MB) of SRC_DIR
    python benchmarks/device_prep.py SRC_DIR DEST_DIR          # there: rebuilt as fp32 from that copy

SRC_DIR for --pack is the embedded model (`python -c "import tailtune as tt; print(tt.backbone.resolve_name('default'))"`).
The fp16 rounding (relative error < 5e-4 per weight) is smaller than that of the bf16 autocast
the benchmarks train with. Results made this way say so (benchmarks/ppt_gpu.sh).
"""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

pack = sys.argv[1] == "--pack"
src, dest = Path(sys.argv[1 + pack]), Path(sys.argv[2 + pack])
name_in, name_out, dtype = (("model.safetensors", "model.fp16.safetensors", "float16") if pack
                            else ("model.fp16.safetensors", "model.safetensors", "float32"))
dest.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():  # the tokenizer, config and a sentence encoder's pooling folder (1_Pooling)
    if f.is_dir():
        shutil.copytree(f, dest / f.name, dirs_exist_ok=True)
    elif f.name not in (name_in, "model.safetensors", "model.fp16.safetensors"):
        shutil.copy(f, dest / f.name)
tensors = load_file(str(src / name_in))
save_file({k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
          str(dest / name_out))
print(f"{dest}: {len(tensors)} tensors as {dtype}")
