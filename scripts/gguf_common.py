"""What scripts/make-test-gguf.py and scripts/make-bench-gguf.py share: the cache
directory, the venv that holds the pinned `gguf` package, and copying a reference
model's tokenizer into a new file."""

import os
import subprocess
import sys
from pathlib import Path

GGUF_VERSION = "0.19.0"
CACHE = Path(
    os.environ.get("XPU_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xpu"
)
VENV = CACHE / "venv-gguf"


def ensure_gguf(prog, script):
    """Re-executes `script` inside the cache venv that has `gguf` installed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"{prog}: creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = subprocess.run([str(python), "-c", f"import gguf, importlib.metadata as m; assert m.version('gguf') == '{GGUF_VERSION}'"],
                           capture_output=True)
    if check.returncode != 0:
        r = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"gguf=={GGUF_VERSION}"])
        if r.returncode != 0:
            sys.exit(f"{prog}: pip could not install gguf=={GGUF_VERSION}; check that the PyPI index is reachable")
    os.execv(str(python), [str(python), script, *sys.argv[1:]])


def copy_tokenizer(prog, writer, reader):
    """Copies every tokenizer.* key of the reference model; returns the vocabulary size."""
    import gguf

    vocab = None
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main = field.types[0]
        value = field.contents()
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, main, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, main)
        if name == "tokenizer.ggml.tokens":
            vocab = len(value)
    if vocab is None:
        sys.exit(f"{prog}: the reference model has no tokenizer.ggml.tokens")
    return vocab
